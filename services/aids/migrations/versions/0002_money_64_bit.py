"""Money and quantities 64-bit: a 32-bit column stops at 21,474,836.47 EUR

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WIDENED = {
    "aid_request": ("quantity", "amount_cents"),
    "aid_ledger": ("quantity", "amount_cents"),
    "aid_budget": ("envelope_cents",),
    "aid_total_kind_year": ("quantity", "amount_cents"),
    "aid_total_school_year": ("amount_cents",),
    "aid_total_month": ("amount_cents",),
}


def legacy_applied(connection: Connection) -> bool:
    """A store made by `create_all` after the change already has 64-bit columns."""
    columns = sa.inspect(connection).get_columns("aid_ledger")
    width = {column["name"]: column["type"] for column in columns}
    return isinstance(width["amount_cents"], sa.BigInteger)


def upgrade() -> None:
    _alter(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _alter(sa.BigInteger(), sa.Integer())


def _alter(before: sa.types.TypeEngine, after: sa.types.TypeEngine) -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:  # SQLite: the table copied, rows kept
            for column in columns:
                batch.alter_column(column, existing_type=before, type_=after)
