"""The aids store's migrations (Alembic), run by shared.migrations on its connection."""

from services.aids.store import TABLES
from shared.migrations import run_migrations

run_migrations(TABLES)
