"""Postgres: one function per money step (hold, settle, release), so each is one round trip

SQLite keeps the SQLAlchemy path (an embedded database has no round trip to save).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

HOLD = """
CREATE OR REPLACE FUNCTION creditgate_hold(
    p_account integer, p_units bigint, p_request text, p_ttl_seconds double precision,
    p_membership integer, p_user integer
) RETURNS TABLE (hold_id integer, balance bigint) LANGUAGE plpgsql AS $$
-- Reserve p_units on the account (and the member's allocation) or nothing: no row means refused.
#variable_conflict use_column
DECLARE
    v_balance bigint;
    v_hold integer;
BEGIN
    IF p_membership IS NOT NULL THEN
        UPDATE memberships SET used = used + p_units WHERE id = p_membership AND used + p_units <= allocation;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    UPDATE accounts SET balance = balance - p_units WHERE id = p_account AND balance >= p_units
        RETURNING accounts.balance INTO v_balance;
    IF NOT FOUND THEN
        IF p_membership IS NOT NULL THEN  -- give the allocation back: all or nothing
            UPDATE memberships SET used = used - p_units WHERE id = p_membership;
        END IF;
        RETURN;
    END IF;
    INSERT INTO holds (account_id, request_id, amount, status, charged, created_at, expires_at, membership_id)
        VALUES (p_account, p_request, p_units, 'open', 0, now(), now() + make_interval(secs => p_ttl_seconds),
                p_membership)
        RETURNING id INTO v_hold;
    INSERT INTO ledger_entries (account_id, type, amount, balance_after, hold_id, user_id, created_at)
        VALUES (p_account, 'hold', -p_units, v_balance, v_hold, p_user, now());
    RETURN QUERY SELECT v_hold, v_balance;
END $$;
"""

CLOSE = """
CREATE OR REPLACE FUNCTION creditgate_close(
    p_hold integer, p_status text, p_charge bigint, p_description text, p_user integer,
    p_request text, p_model text, p_provider text, p_prompt integer, p_completion integer,
    p_latency integer, p_outcome text, p_byok boolean
) RETURNS TABLE (charged bigint, balance bigint) LANGUAGE plpgsql AS $$
-- Close an open hold: charge min(p_charge, hold), give the rest back, append the ledger rows and the usage
-- record. No row means the hold was not open (the caller takes the slow path: expired, or closed already).
#variable_conflict use_column
DECLARE
    v_account integer;
    v_amount bigint;
    v_charged bigint;
    v_membership integer;
    v_balance bigint;
BEGIN
    UPDATE holds SET status = p_status, charged = LEAST(amount, p_charge), closed_at = now()
        WHERE id = p_hold AND status = 'open'
        RETURNING holds.account_id, holds.amount, holds.charged, holds.membership_id
        INTO v_account, v_amount, v_charged, v_membership;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_membership IS NOT NULL AND v_amount > v_charged THEN  -- allocation before account, as in the hold
        UPDATE memberships SET used = used - (v_amount - v_charged) WHERE id = v_membership;
    END IF;
    UPDATE accounts SET balance = balance + (v_amount - v_charged) WHERE id = v_account
        RETURNING accounts.balance INTO v_balance;
    INSERT INTO ledger_entries (account_id, type, amount, balance_after, hold_id, user_id, created_at)
        VALUES (v_account, 'release', v_amount, v_balance + v_charged, p_hold, p_user, now());
    IF v_charged > 0 THEN
        INSERT INTO ledger_entries (account_id, type, amount, balance_after, hold_id, user_id, description, created_at)
            VALUES (v_account, 'api_usage', -v_charged, v_balance, p_hold, p_user, p_description, now());
    END IF;
    IF p_request IS NOT NULL THEN
        INSERT INTO usage_records (request_id, user_id, model, provider, prompt_tokens, completion_tokens, credits,
                                   latency_ms, outcome, byok, created_at)
            VALUES (p_request, p_user, p_model, p_provider, p_prompt, p_completion, v_charged, p_latency, p_outcome,
                    p_byok, now());
    END IF;
    RETURN QUERY SELECT v_charged, v_balance;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(HOLD)
    op.execute(CLOSE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS creditgate_close(integer, text, bigint, text, integer, text, text, text, "
        "integer, integer, integer, text, boolean)"
    )
    op.execute("DROP FUNCTION IF EXISTS creditgate_hold(integer, bigint, text, double precision, integer, integer)")
