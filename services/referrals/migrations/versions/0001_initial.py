"""The schema as `create_all` made it before the migrations

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

_REFUSED = "access_audit is append-only"
# The audit is append-only: UPDATE and DELETE (and TRUNCATE on PostgreSQL) are refused.
APPEND_ONLY = {
    "sqlite": [
        f"CREATE TRIGGER access_audit_no_{verb.lower()} BEFORE {verb} ON access_audit "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END"
        for verb in ("UPDATE", "DELETE")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION access_audit_append_only() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{_REFUSED}'; END $$",
        "CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON access_audit FOR EACH STATEMENT EXECUTE FUNCTION access_audit_append_only()",
    ],
}

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('agency_id', sa.String(length=200), nullable=True),
    sa.Column('referral_id', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.String(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_access_audit_at', 'access_audit', ['at'])
    op.create_index('ix_access_audit_referral_id', 'access_audit', ['referral_id'])
    for statement in APPEND_ONLY[op.get_bind().dialect.name]:
        op.execute(statement)
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
    op.create_table('person_claim',
    sa.Column('person_key', sa.String(length=64), nullable=False),
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('person_key')
    )
    op.create_table('referral',
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.Column('agency_id', sa.String(length=200), nullable=False),
    sa.Column('agency_kind', sa.String(length=32), nullable=False),
    sa.Column('school_id', sa.String(length=100), nullable=False),
    sa.Column('referred_on', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('reasons', sa.String(), nullable=False),
    sa.Column('status_changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('trainee_id', sa.String(length=64), nullable=True),
    sa.Column('duplicate_of', sa.String(length=64), nullable=True),
    sa.Column('highest_qualification', sa.String(length=16), nullable=False),
    sa.Column('in_school', sa.Boolean(), nullable=False),
    sa.Column('has_work_experience', sa.Boolean(), nullable=False),
    sa.Column('rqth', sa.Boolean(), nullable=False),
    sa.Column('qpv_resident', sa.Boolean(), nullable=False),
    sa.Column('enrolled_on', sa.Date(), nullable=True),
    sa.Column('enrolled_school_id', sa.String(length=100), nullable=True),
    sa.Column('age_at_entry', sa.Integer(), nullable=True),
    sa.Column('exited_on', sa.Date(), nullable=True),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('first_name', sa.String(), nullable=True),
    sa.Column('last_name', sa.String(), nullable=True),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('email', sa.String(), nullable=True),
    sa.Column('phone', sa.String(), nullable=True),
    sa.Column('person_key', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('referral_id')
    )
    op.create_index('ix_referral_agency_id', 'referral', ['agency_id'])
    op.create_index('ix_referral_trainee_id', 'referral', ['trainee_id'])
    op.create_index('ix_referral_updated_at', 'referral', ['updated_at'])
    op.create_table('referral_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('request_event_id', sa.String(length=36), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('reasons', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_referral_history_referral_id', 'referral_history', ['referral_id'])
    op.create_table('referral_submission',
    sa.Column('referral_id', sa.String(length=64), nullable=False),
    sa.Column('agency_id', sa.String(length=200), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('candidate_digest', sa.String(length=64), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('referral_id')
    )
    op.create_table('store_secret',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('tombstone_sent',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_tombstone_sent_at', 'tombstone_sent', ['at'])
    op.create_table('webhook_delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.String(length=200), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('body', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.Column('parked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_delivery_agency_id', 'webhook_delivery', ['agency_id'])
    op.create_index('ix_webhook_delivery_due', 'webhook_delivery', ['state', 'next_attempt_at'])
    op.create_table('webhook_endpoint',
    sa.Column('agency_id', sa.String(length=200), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('agency_id')
    )


def downgrade() -> None:
    op.drop_table('webhook_endpoint')
    op.drop_table('webhook_delivery')
    op.drop_table('tombstone_sent')
    op.drop_table('store_secret')
    op.drop_table('referral_submission')
    op.drop_table('referral_history')
    op.drop_table('referral')
    op.drop_table('person_claim')
    op.drop_table('outbox_parked')
    op.drop_table('outbox_message')
    op.drop_table('inbox_event')
    op.drop_table('access_audit')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION access_audit_append_only()")
