"""orgs, memberships, subscriptions, admin audit; attribution on ledger and holds

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from creditgate.db.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("org_id", sa.Integer, sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("allocation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("used", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("used >= 0", name="ck_memberships_used_nonnegative"),
    )
    op.create_index("ix_memberships_org_id", "memberships", ["org_id"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject", sa.String(64), nullable=False, unique=True),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("actor_user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("old_value", sa.String(255), nullable=True),
        sa.Column("new_value", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("org_id", sa.Integer, nullable=True))
        batch.create_unique_constraint("uq_accounts_org_id", ["org_id"])
        batch.create_foreign_key("fk_accounts_org_id", "orgs", ["org_id"], ["id"], ondelete="RESTRICT")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_ledger_entries_user_id", "users", ["user_id"], ["id"])
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("membership_id", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_holds_membership_id", "memberships", ["membership_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("holds") as batch:
        batch.drop_constraint("fk_holds_membership_id", type_="foreignkey")
        batch.drop_column("membership_id")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_constraint("fk_ledger_entries_user_id", type_="foreignkey")
        batch.drop_column("user_id")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("fk_accounts_org_id", type_="foreignkey")
        batch.drop_constraint("uq_accounts_org_id", type_="unique")
        batch.drop_column("org_id")
    for table in ("admin_audit", "subscriptions", "memberships", "orgs"):
        op.drop_table(table)
