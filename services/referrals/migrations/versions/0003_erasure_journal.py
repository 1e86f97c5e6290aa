"""(1.1) The erasures made, kept in the store as on the journal topic: a restored store
erases them again, and a submission read again for one of them is stored erased

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "referral_erasure",
        sa.Column("referral_id", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("referral_id"),
    )


def downgrade() -> None:
    op.drop_table("referral_erasure")
