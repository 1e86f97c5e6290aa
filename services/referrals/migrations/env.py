"""The referrals store's migrations (Alembic), run by shared.migrations on its connection."""

from services.referrals.store import TABLES
from shared.migrations import run_migrations

run_migrations(TABLES)
