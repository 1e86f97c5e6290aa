"""The reports' indexes: a year's trainees (by exit and enrollment date), the schools seen,
and a year's referrals (the network's and one agency's), so that a report reads the rows of
the year asked and not the whole history

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outcome_trainee_exited_on_enrolled_on", "outcome_trainee",
                    ["exited_on", "enrolled_on"])
    op.create_index("ix_outcome_trainee_enrolled_on", "outcome_trainee", ["enrolled_on"])
    op.create_index("ix_outcome_trainee_school_id", "outcome_trainee", ["school_id"])
    op.create_index("ix_outcome_referral_received_at", "outcome_referral", ["received_at"])
    op.create_index("ix_outcome_referral_agency_id_received_at", "outcome_referral",
                    ["agency_id", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_outcome_referral_agency_id_received_at", "outcome_referral")
    op.drop_index("ix_outcome_referral_received_at", "outcome_referral")
    op.drop_index("ix_outcome_trainee_school_id", "outcome_trainee")
    op.drop_index("ix_outcome_trainee_enrolled_on", "outcome_trainee")
    op.drop_index("ix_outcome_trainee_exited_on_enrolled_on", "outcome_trainee")
