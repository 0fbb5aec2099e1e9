"""org invitations: joining an org is an invitation the invitee accepts (or declines)

An invitation is addressed to an email, whether or not a user has it yet (the inviter cannot tell), and is
unique per org and email: inviting again updates it and makes it pending again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditgate.db.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_invitations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.Integer, sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("allocation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("invited_by", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("responded_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("org_id", "email", name="uq_org_invitations_org_email"),
    )
    op.create_index("ix_org_invitations_email_status", "org_invitations", ["email", "status"])


def downgrade() -> None:
    op.drop_index("ix_org_invitations_email_status", "org_invitations")
    op.drop_table("org_invitations")
