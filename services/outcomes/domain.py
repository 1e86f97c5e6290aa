"""Outcomes rules: pure functions, no I/O (the rules arrive with the outcomes issue)."""
