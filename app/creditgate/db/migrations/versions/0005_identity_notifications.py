"""identities (OIDC, Telegram), short-lived API keys, inbound event ids (Lago, Telegram), notification outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditgate.db.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime, nullable=True))
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("issuer", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("issuer", "subject", name="uq_identities_issuer_subject"),
    )
    op.create_table(
        "inbound_events",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_notifications_pending", "notifications", ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_pending", "notifications")
    op.drop_table("notifications")
    op.drop_table("inbound_events")
    op.drop_table("identities")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
