"""Postgres: group commit — many holds (or closes) in one function call, one transaction, one round trip

Each account and allocation row a batch touches is locked once and written once, however many requests it
serves, so one shared balance is no per-request bottleneck. Per request the answer is what ``creditgate_hold`` /
``creditgate_close`` (0006) would give in the batch's order; those stay for single requests and the fallback.
Locks are taken in one order everywhere: holds, then memberships, then accounts, each by id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HOLD_BATCH = """
CREATE OR REPLACE FUNCTION creditgate_hold_batch(
    p_accounts integer[], p_units bigint[], p_requests text[], p_ttl_seconds double precision,
    p_memberships integer[], p_users integer[]
) RETURNS TABLE (hold_id integer, balance bigint) LANGUAGE plpgsql AS $$
-- Row i answers request i: (hold id, balance after), or (NULL, NULL) if the balance or the allocation is short.
#variable_conflict use_column
DECLARE
    n integer := cardinality(p_accounts);
    acc_ids integer[];
    acc_bal bigint[];
    acc_start bigint[];
    mem_ids integer[];
    mem_used bigint[];
    mem_start bigint[];
    mem_alloc bigint[];
    v_hold integer[] := array_fill(NULL::integer, ARRAY[n]);
    v_after bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    a integer;
    m integer;
BEGIN
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(used), '{}'), coalesce(array_agg(allocation), '{}')
        INTO mem_ids, mem_used, mem_alloc
        FROM (SELECT id, used, allocation FROM memberships WHERE id = ANY(p_memberships) ORDER BY id FOR UPDATE) s;
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(balance), '{}') INTO acc_ids, acc_bal
        FROM (SELECT id, balance FROM accounts WHERE id = ANY(p_accounts) ORDER BY id FOR UPDATE) s;
    acc_start := acc_bal;
    mem_start := mem_used;
    FOR i IN 1..n LOOP
        a := array_position(acc_ids, p_accounts[i]);
        CONTINUE WHEN a IS NULL OR acc_bal[a] < p_units[i];
        IF p_memberships[i] IS NOT NULL THEN
            m := array_position(mem_ids, p_memberships[i]);
            CONTINUE WHEN m IS NULL OR mem_used[m] + p_units[i] > mem_alloc[m];
            mem_used[m] := mem_used[m] + p_units[i];
        END IF;
        acc_bal[a] := acc_bal[a] - p_units[i];
        v_after[i] := acc_bal[a];
        v_hold[i] := nextval(pg_get_serial_sequence('holds', 'id'));
    END LOOP;
    UPDATE memberships SET used = s.used FROM unnest(mem_ids, mem_used, mem_start) AS s(id, used, start)
        WHERE memberships.id = s.id AND s.used <> s.start;
    UPDATE accounts SET balance = s.balance FROM unnest(acc_ids, acc_bal, acc_start) AS s(id, balance, start)
        WHERE accounts.id = s.id AND s.balance <> s.start;
    INSERT INTO holds (id, account_id, request_id, amount, status, charged, created_at, expires_at, membership_id)
        SELECT h, acc, req, u, 'open', 0, now(), now() + make_interval(secs => p_ttl_seconds), mem
        FROM unnest(v_hold, p_accounts, p_requests, p_units, p_memberships) AS t(h, acc, req, u, mem)
        WHERE h IS NOT NULL;
    INSERT INTO ledger_entries (account_id, type, amount, balance_after, hold_id, user_id, created_at)
        SELECT acc, 'hold', -u, after, h, usr, now()
        FROM unnest(v_hold, p_accounts, p_units, v_after, p_users) WITH ORDINALITY AS t(h, acc, u, after, usr, i)
        WHERE h IS NOT NULL ORDER BY i;  -- ids in request order: each balance_after follows the one before
    RETURN QUERY SELECT * FROM unnest(v_hold, v_after);
END $$;
"""

CLOSE_BATCH = """
CREATE OR REPLACE FUNCTION creditgate_close_batch(
    p_holds integer[], p_statuses text[], p_charges bigint[], p_descriptions text[], p_users integer[],
    p_requests text[], p_models text[], p_providers text[], p_prompts integer[], p_completions integer[],
    p_latencies integer[], p_outcomes text[], p_byoks boolean[]
) RETURNS TABLE (charged bigint, balance bigint) LANGUAGE plpgsql AS $$
-- Row i answers close i: (charged, balance after), or (NULL, NULL) if that hold was not open. Hold ids are distinct.
#variable_conflict use_column
DECLARE
    n integer := cardinality(p_holds);
    c_ids integer[];
    c_account integer[];
    c_amount bigint[];
    c_charged bigint[];
    c_membership integer[];
    acc_ids integer[];
    acc_bal bigint[];
    acc_start bigint[];
    mem_ids integer[];
    mem_used bigint[];
    mem_start bigint[];
    v_account integer[] := array_fill(NULL::integer, ARRAY[n]);
    v_amount bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_charged bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_released bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_after bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    k integer;
    a integer;
    m integer;
BEGIN
    WITH open AS (SELECT id FROM holds WHERE id = ANY(p_holds) AND status = 'open' ORDER BY id FOR UPDATE),
    closed AS (
        UPDATE holds SET status = t.status, charged = LEAST(holds.amount, t.charge), closed_at = now()
        FROM unnest(p_holds, p_statuses, p_charges) AS t(id, status, charge), open
        WHERE holds.id = t.id AND holds.id = open.id
        RETURNING holds.id, holds.account_id, holds.amount, holds.charged, holds.membership_id)
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(account_id), '{}'), coalesce(array_agg(amount), '{}'),
           coalesce(array_agg(charged), '{}'), coalesce(array_agg(membership_id), '{}')
        INTO c_ids, c_account, c_amount, c_charged, c_membership FROM closed;
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(used), '{}') INTO mem_ids, mem_used
        FROM (SELECT id, used FROM memberships WHERE id = ANY(c_membership) ORDER BY id FOR UPDATE) s;
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(balance), '{}') INTO acc_ids, acc_bal
        FROM (SELECT id, balance FROM accounts WHERE id = ANY(c_account) ORDER BY id FOR UPDATE) s;
    acc_start := acc_bal;
    mem_start := mem_used;
    FOR i IN 1..n LOOP
        k := array_position(c_ids, p_holds[i]);
        CONTINUE WHEN k IS NULL;
        c_ids[k] := NULL;  -- answered once
        a := array_position(acc_ids, c_account[k]);
        IF c_membership[k] IS NOT NULL AND c_amount[k] > c_charged[k] THEN
            m := array_position(mem_ids, c_membership[k]);
            mem_used[m] := mem_used[m] - (c_amount[k] - c_charged[k]);
        END IF;
        v_released[i] := acc_bal[a] + c_amount[k];  -- after the release entry: the whole hold back
        acc_bal[a] := acc_bal[a] + c_amount[k] - c_charged[k];
        v_after[i] := acc_bal[a];
        v_account[i] := c_account[k];
        v_amount[i] := c_amount[k];
        v_charged[i] := c_charged[k];
    END LOOP;
    UPDATE memberships SET used = s.used FROM unnest(mem_ids, mem_used, mem_start) AS s(id, used, start)
        WHERE memberships.id = s.id AND s.used <> s.start;
    UPDATE accounts SET balance = s.balance FROM unnest(acc_ids, acc_bal, acc_start) AS s(id, balance, start)
        WHERE accounts.id = s.id AND s.balance <> s.start;
    INSERT INTO ledger_entries (account_id, type, amount, balance_after, hold_id, user_id, description, created_at)
        SELECT acc, typ, amt, after, h, usr, descr, now() FROM (
            SELECT i, 0 AS step, acc, 'release' AS typ, amount AS amt, released AS after, h, usr, NULL::text AS descr
                FROM unnest(v_account, v_amount, v_released, p_holds, p_users)
                    WITH ORDINALITY AS t(acc, amount, released, h, usr, i)
            UNION ALL
            SELECT i, 1, acc, 'api_usage', -charged, after, h, usr, descr
                FROM unnest(v_account, v_charged, v_after, p_holds, p_users, p_descriptions)
                    WITH ORDINALITY AS t(acc, charged, after, h, usr, descr, i)
                WHERE charged > 0
        ) e WHERE acc IS NOT NULL ORDER BY i, step;  -- ids in request order: each balance_after follows the one before
    INSERT INTO usage_records (request_id, user_id, model, provider, prompt_tokens, completion_tokens, credits,
                               latency_ms, outcome, byok, created_at)
        SELECT req, usr, model, provider, prompt, completion, charged, latency, outcome, byok, now()
        FROM unnest(v_account, v_charged, p_requests, p_users, p_models, p_providers, p_prompts, p_completions,
                    p_latencies, p_outcomes, p_byoks)
            AS t(acc, charged, req, usr, model, provider, prompt, completion, latency, outcome, byok)
        WHERE acc IS NOT NULL AND req IS NOT NULL;
    RETURN QUERY SELECT * FROM unnest(v_charged, v_after);
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(HOLD_BATCH)
    op.execute(CLOSE_BATCH)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS creditgate_close_batch(integer[], text[], bigint[], text[], integer[], text[], "
        "text[], text[], integer[], integer[], integer[], text[], boolean[])"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS creditgate_hold_batch(integer[], bigint[], text[], double precision, integer[], "
        "integer[])"
    )
