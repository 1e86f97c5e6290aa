"""The outcomes store's migrations (Alembic), run by shared.migrations on its connection."""

from services.outcomes.store import TABLES
from shared.migrations import run_migrations

run_migrations(TABLES)
