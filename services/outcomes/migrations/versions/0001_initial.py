"""The schema as `create_all` made it before the migrations

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbox_event',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('outbox_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(), nullable=True),
    sa.Column('payload', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('outbox_parked',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(), nullable=True),
    sa.Column('payload', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('error', sa.String(), nullable=False),
    sa.Column('parked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('outcome_exit_submission',
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.String(), nullable=False),
    sa.Column('decided', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('outcome_held_exit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.String(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_outcome_held_exit_received_at', 'outcome_held_exit', ['received_at'])
    op.create_index('ix_outcome_held_exit_trainee_id', 'outcome_held_exit', ['trainee_id'])
    op.create_table('outcome_referral',
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.Column('agency_id', sa.String(length=200), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('trainee_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('referral_id')
    )
    op.create_index('ix_outcome_referral_agency_id', 'outcome_referral', ['agency_id'])
    op.create_table('outcome_trainee',
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=False),
    sa.Column('enrolled_on', sa.Date(), nullable=False),
    sa.Column('agency_kind', sa.String(length=32), nullable=False),
    sa.Column('age_at_entry', sa.Integer(), nullable=False),
    sa.Column('rqth', sa.Boolean(), nullable=False),
    sa.Column('qpv_resident', sa.Boolean(), nullable=False),
    sa.Column('has_work_experience', sa.Boolean(), nullable=False),
    sa.Column('exited_on', sa.Date(), nullable=True),
    sa.Column('outcome', sa.String(length=40), nullable=True),
    sa.Column('category', sa.String(length=16), nullable=True),
    sa.Column('satisfied', sa.Boolean(), nullable=True),
    sa.PrimaryKeyConstraint('trainee_id')
    )
    op.create_index('ix_outcome_trainee_referral_id', 'outcome_trainee', ['referral_id'])
    op.create_table('outcome_trainee_aid',
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('grants', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('trainee_id', 'kind')
    )
    op.create_table('tombstone_sent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_tombstone_sent_at', 'tombstone_sent', ['at'])


def downgrade() -> None:
    op.drop_table('tombstone_sent')
    op.drop_table('outcome_trainee_aid')
    op.drop_table('outcome_trainee')
    op.drop_table('outcome_referral')
    op.drop_table('outcome_held_exit')
    op.drop_table('outcome_exit_submission')
    op.drop_table('outbox_parked')
    op.drop_table('outbox_message')
    op.drop_table('inbox_event')
