"""providers: BYOK keys, byok flag on usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditgate.db.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("byok", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "provider_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("encrypted_key", sa.Text, nullable=False),
        sa.Column("last4", sa.String(8), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("user_id", "provider", name="uq_provider_keys_user_provider"),
    )


def downgrade() -> None:
    op.drop_table("provider_keys")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("byok")
