"""The aids store: its tables and queries."""

from __future__ import annotations

from sqlalchemy import Table

TABLES: tuple[Table, ...] = ()
