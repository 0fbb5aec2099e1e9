"""Postgres: a hold's commit may be asynchronous; a close names its hold by id and request

``creditgate_hold``/``_batch`` take ``p_async_commit``: the hold's transaction then commits with
``synchronous_commit = off`` (``set_config(…, true)``: that transaction only), and the request does not wait for a
disk flush before calling the upstream. The settle's durable commit, later in the same WAL, makes the hold durable
too. A Postgres crash between them loses the hold, and with it the advance of the holds' id sequence: the next hold
may get the lost one's id. So ``creditgate_close``/``_batch`` now close the hold of that id *and* that request: a
settle for a lost hold closes nothing (the caller charges it from the balance, ``ledger.service.settle_lost_hold``)
instead of another request's hold. Their ``p_request`` (the usage record's request until now) moves second and is
always given; the usage record is written when ``p_model`` is given.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

HOLD = """
CREATE OR REPLACE FUNCTION creditgate_hold(
    p_account integer, p_units bigint, p_request text, p_ttl_seconds double precision,
    p_membership integer, p_user integer, p_async_commit boolean
) RETURNS TABLE (hold_id integer, balance bigint) LANGUAGE plpgsql AS $$
-- Reserve p_units on the account (and the member's allocation) or nothing: no row means refused. p_async_commit:
-- this transaction's commit does not wait for its WAL to reach the disk (the settle's durable commit flushes it).
#variable_conflict use_column
DECLARE
    v_balance bigint;
    v_hold integer;
BEGIN
    IF p_async_commit THEN  -- is_local: to the end of this transaction, its commit included; never the session's
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
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

HOLD_BATCH = """
CREATE OR REPLACE FUNCTION creditgate_hold_batch(
    p_accounts integer[], p_units bigint[], p_requests text[], p_ttl_seconds double precision,
    p_memberships integer[], p_users integer[], p_async_commit boolean
) RETURNS TABLE (hold_id integer, balance bigint) LANGUAGE plpgsql AS $$
-- Row i answers request i: (hold id, balance after), or (NULL, NULL) if the balance or the allocation is short.
-- p_async_commit: as in creditgate_hold.
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
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
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

CLOSE = """
CREATE OR REPLACE FUNCTION creditgate_close(
    p_hold integer, p_request text, p_status text, p_charge bigint, p_description text, p_user integer,
    p_model text, p_provider text, p_prompt integer, p_completion integer,
    p_latency integer, p_outcome text, p_byok boolean
) RETURNS TABLE (charged bigint, balance bigint) LANGUAGE plpgsql AS $$
-- Close an open hold: charge p_charge — up to the hold from the hold, beyond it from what the account (and the
-- member's allocation) still has — give the rest back, append the ledger rows and the usage record (with what
-- could not be recovered; written when p_model is not NULL). The hold is the one of id p_hold AND request p_request:
-- an id alone may name another request's hold (a hold lost in a crash gives its id to the next). No row means no
-- such hold is open (the caller takes the slow path).
#variable_conflict use_column
DECLARE
    v_account integer;
    v_amount bigint;
    v_charged bigint;
    v_membership integer;
    v_balance bigint;
    v_room bigint;
    v_extra bigint;
BEGIN
    UPDATE holds SET status = p_status, charged = LEAST(amount, p_charge), closed_at = now()
        WHERE id = p_hold AND request_id = p_request AND status = 'open'
        RETURNING holds.account_id, holds.amount, holds.charged, holds.membership_id
        INTO v_account, v_amount, v_charged, v_membership;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_charge > v_amount THEN  -- beyond the hold: allocation before account, as in the hold
        IF v_membership IS NOT NULL THEN
            SELECT allocation - used INTO v_room FROM memberships WHERE id = v_membership FOR UPDATE;
        END IF;
        SELECT accounts.balance INTO v_balance FROM accounts WHERE id = v_account FOR UPDATE;
        v_extra := GREATEST(LEAST(p_charge - v_amount, v_balance, coalesce(v_room, v_balance)), 0);
        IF v_extra > 0 THEN
            v_charged := v_charged + v_extra;
            UPDATE holds SET charged = v_charged WHERE id = p_hold;
        END IF;
    END IF;
    IF v_membership IS NOT NULL AND v_amount <> v_charged THEN
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
    IF p_model IS NOT NULL THEN
        INSERT INTO usage_records (request_id, user_id, model, provider, prompt_tokens, completion_tokens, credits,
                                   unrecovered, latency_ms, outcome, byok, created_at)
            VALUES (p_request, p_user, p_model, p_provider, p_prompt, p_completion, v_charged,
                    GREATEST(p_charge - v_charged, 0), p_latency, p_outcome, p_byok, now());
    END IF;
    RETURN QUERY SELECT v_charged, v_balance;
END $$;
"""

CLOSE_BATCH = """
CREATE OR REPLACE FUNCTION creditgate_close_batch(
    p_holds integer[], p_requests text[], p_statuses text[], p_charges bigint[], p_descriptions text[],
    p_users integer[], p_models text[], p_providers text[], p_prompts integer[], p_completions integer[],
    p_latencies integer[], p_outcomes text[], p_byoks boolean[]
) RETURNS TABLE (charged bigint, balance bigint) LANGUAGE plpgsql AS $$
-- Row i answers close i: (charged, balance after), or (NULL, NULL) if no hold of id p_holds[i] AND request
-- p_requests[i] was open (see creditgate_close). Hold ids are distinct. A usage record when p_models[i] is not NULL.
-- A charge above its hold takes the rest from the account's balance (and the member's allocation) as they stand at
-- that point of the batch, never below zero; the usage record keeps what could not be recovered.
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
    mem_alloc bigint[];
    v_account integer[] := array_fill(NULL::integer, ARRAY[n]);
    v_amount bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_charged bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_released bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    v_after bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    k integer;
    a integer;
    m integer;
    v_extra bigint;
BEGIN
    WITH open AS (
        SELECT holds.id FROM holds JOIN unnest(p_holds, p_requests) AS r(id, req)
            ON holds.id = r.id AND holds.request_id = r.req
        WHERE holds.status = 'open' ORDER BY holds.id FOR UPDATE OF holds),
    closed AS (
        UPDATE holds SET status = t.status, charged = LEAST(holds.amount, t.charge), closed_at = now()
        FROM unnest(p_holds, p_statuses, p_charges) AS t(id, status, charge), open
        WHERE holds.id = t.id AND holds.id = open.id
        RETURNING holds.id, holds.account_id, holds.amount, holds.charged, holds.membership_id)
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(account_id), '{}'), coalesce(array_agg(amount), '{}'),
           coalesce(array_agg(charged), '{}'), coalesce(array_agg(membership_id), '{}')
        INTO c_ids, c_account, c_amount, c_charged, c_membership FROM closed;
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(used), '{}'), coalesce(array_agg(allocation), '{}')
        INTO mem_ids, mem_used, mem_alloc
        FROM (SELECT id, used, allocation FROM memberships WHERE id = ANY(c_membership) ORDER BY id FOR UPDATE) s;
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(balance), '{}') INTO acc_ids, acc_bal
        FROM (SELECT id, balance FROM accounts WHERE id = ANY(c_account) ORDER BY id FOR UPDATE) s;
    acc_start := acc_bal;
    mem_start := mem_used;
    FOR i IN 1..n LOOP
        k := array_position(c_ids, p_holds[i]);
        CONTINUE WHEN k IS NULL;
        c_ids[k] := NULL;  -- answered once
        a := array_position(acc_ids, c_account[k]);
        m := CASE WHEN c_membership[k] IS NULL THEN NULL ELSE array_position(mem_ids, c_membership[k]) END;
        IF p_charges[i] > c_amount[k] THEN  -- beyond the hold: from what is left now, never below zero
            v_extra := LEAST(p_charges[i] - c_amount[k], acc_bal[a]);
            IF m IS NOT NULL THEN
                v_extra := LEAST(v_extra, mem_alloc[m] - mem_used[m]);
            END IF;
            c_charged[k] := c_charged[k] + GREATEST(v_extra, 0);
        END IF;
        IF m IS NOT NULL THEN
            mem_used[m] := mem_used[m] - (c_amount[k] - c_charged[k]);
        END IF;
        v_released[i] := acc_bal[a] + c_amount[k];  -- after the release entry: the whole hold back
        acc_bal[a] := acc_bal[a] + c_amount[k] - c_charged[k];
        v_after[i] := acc_bal[a];
        v_account[i] := c_account[k];
        v_amount[i] := c_amount[k];
        v_charged[i] := c_charged[k];
    END LOOP;
    UPDATE holds SET charged = s.charged FROM unnest(p_holds, v_charged, v_amount) AS s(id, charged, amount)
        WHERE holds.id = s.id AND s.charged > s.amount;
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
                               unrecovered, latency_ms, outcome, byok, created_at)
        SELECT req, usr, model, provider, prompt, completion, charged, GREATEST(wanted - charged, 0), latency,
               outcome, byok, now()
        FROM unnest(v_account, v_charged, p_charges, p_requests, p_users, p_models, p_providers, p_prompts,
                    p_completions, p_latencies, p_outcomes, p_byoks)
            AS t(acc, charged, wanted, req, usr, model, provider, prompt, completion, latency, outcome, byok)
        WHERE acc IS NOT NULL AND model IS NOT NULL;
    RETURN QUERY SELECT * FROM unnest(v_charged, v_after);
END $$;
"""

# The argument types of each function before (0006/0007/0009) and after: a changed list is a new overload, so the
# old one is dropped (a call that fits both would be ambiguous).
OLD = (
    "creditgate_hold(integer, bigint, text, double precision, integer, integer)",
    "creditgate_hold_batch(integer[], bigint[], text[], double precision, integer[], integer[])",
    "creditgate_close(integer, text, bigint, text, integer, text, text, text, integer, integer, integer, text, "
    "boolean)",
    "creditgate_close_batch(integer[], text[], bigint[], text[], integer[], text[], text[], text[], integer[], "
    "integer[], integer[], text[], boolean[])",
)
NEW = (
    "creditgate_hold(integer, bigint, text, double precision, integer, integer, boolean)",
    "creditgate_hold_batch(integer[], bigint[], text[], double precision, integer[], integer[], boolean)",
    "creditgate_close(integer, text, text, bigint, text, integer, text, text, integer, integer, integer, text, "
    "boolean)",
    "creditgate_close_batch(integer[], text[], text[], bigint[], text[], integer[], text[], text[], integer[], "
    "integer[], integer[], text[], boolean[])",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in OLD:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    for definition in (HOLD, HOLD_BATCH, CLOSE, CLOSE_BATCH):
        op.execute(definition)


def _earlier(name: str, function: str) -> str:
    """A function's text as an earlier revision created it (this folder is no package: load the file)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, function))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in NEW:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute(_earlier("0006_ledger_functions", "HOLD"))
    op.execute(_earlier("0007_ledger_batches", "HOLD_BATCH"))
    op.execute(_earlier("0009_charge_beyond_hold", "CLOSE"))
    op.execute(_earlier("0009_charge_beyond_hold", "CLOSE_BATCH"))
