"""billing: Stripe customers, payments, applied events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditgate.db.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("stripe_customer_id", sa.String(255), nullable=True))
        batch.create_unique_constraint("uq_accounts_stripe_customer_id", ["stripe_customer_id"])
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("checkout_session_id", sa.String(255), nullable=False, unique=True),
        sa.Column("payment_intent_id", sa.String(255), nullable=True, unique=True),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("credits", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("refunded_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("disputed_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reversed_credits", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("paid_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_payments_account_id", "payments", ["account_id"])
    op.create_table(
        "stripe_events",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("pending_payment_intent", sa.String(255), nullable=True),
        sa.Column("payload", sa.Text, nullable=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_stripe_events_pending_payment_intent", "stripe_events", ["pending_payment_intent"])


def downgrade() -> None:
    op.drop_table("stripe_events")
    op.drop_table("payments")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("uq_accounts_stripe_customer_id", type_="unique")
        batch.drop_column("stripe_customer_id")
