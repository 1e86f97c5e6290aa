"""The schema as `create_all` made it before the migrations, money still 32-bit

(0002 widens the money columns.)

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
    op.create_table('aid_budget',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('envelope_cents', sa.Integer(), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('year', 'kind')
    )
    op.create_table('aid_childcare_trainee',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('year', 'trainee_id')
    )
    op.create_table('aid_held_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.String(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_aid_held_request_received_at', 'aid_held_request', ['received_at'])
    op.create_index('ix_aid_held_request_trainee_id', 'aid_held_request', ['trainee_id'])
    op.create_table('aid_ledger',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('request_event_id', sa.String(length=36), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('rate_cents', sa.Integer(), nullable=True),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('month', sa.Integer(), nullable=False),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('correction_of', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_aid_ledger_request_id', 'aid_ledger', ['request_id'])
    op.create_index('ix_aid_ledger_trainee_id', 'aid_ledger', ['trainee_id'])
    op.create_index('ix_aid_ledger_year', 'aid_ledger', ['year'])
    op.create_table('aid_request',
    sa.Column('request_id', sa.String(length=200), nullable=False),
    sa.Column('request_event_id', sa.String(length=36), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=True),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_index('ix_aid_request_trainee_id', 'aid_request', ['trainee_id'])
    op.create_table('aid_total_kind_year',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('granted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('trainees', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', 'kind')
    )
    op.create_table('aid_total_month',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('month', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', 'month', 'kind')
    )
    op.create_table('aid_total_school_year',
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('year', 'school_id', 'kind')
    )
    op.create_table('aid_trainee',
    sa.Column('trainee_id', sa.String(length=64), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=True),
    sa.Column('enrolled_on', sa.Date(), nullable=True),
    sa.Column('exited_on', sa.Date(), nullable=True),
    sa.PrimaryKeyConstraint('trainee_id')
    )
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
    op.drop_table('outbox_parked')
    op.drop_table('outbox_message')
    op.drop_table('inbox_event')
    op.drop_table('aid_trainee')
    op.drop_table('aid_total_school_year')
    op.drop_table('aid_total_month')
    op.drop_table('aid_total_kind_year')
    op.drop_table('aid_request')
    op.drop_table('aid_ledger')
    op.drop_table('aid_held_request')
    op.drop_table('aid_childcare_trainee')
    op.drop_table('aid_budget')
