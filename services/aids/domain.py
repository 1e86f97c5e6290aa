"""Aids rules: pure functions, no I/O (the rules arrive with the aids issue)."""
