"""Group commit on Postgres (ledger/fast.py, migration 0007): many holds and closes per transaction, each request
answered as if alone — no overdraft, allocations kept, balance_after chained, one bad request failing alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from asyncpg import ConnectionDoesNotExistError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.engine import libpq_url
from creditgate.db.models import Account, Hold, LedgerEntry, Membership, Org, UsageRecord
from creditgate.ledger import service as ledger
from creditgate.ledger.fast import HOLD, PostgresLedger, Usage
from creditgate.testing.gateway import TestUser, UserFactory

pytestmark = [pytest.mark.critical, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
TTL = 300.0


@pytest.fixture
async def fast(database_url: str, cg_sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[PostgresLedger]:
    store = await PostgresLedger.connect(database_url, size=4, batch=True, async_hold=True)  # as the gateway runs
    yield store
    await store.close_pool()


def _hold(fast: PostgresLedger, user: TestUser, request_id: str, *, user_id: int | None = None) -> Any:
    """One 1.00-credit hold on ``user``'s own account (the call, to await or gather)."""
    return fast.hold(
        account_id=user.account_id,
        units=100,
        request_id=request_id,
        ttl_seconds=TTL,
        membership_id=None,
        user_id=user_id,
    )


def _usage(request_id: str) -> Usage:
    return Usage(request_id, "test-model", "fake", 10, 5, 3, "ok", False)


async def _hold_many(fast: PostgresLedger, n: int, *, account_id: int, units: int, **kw: int | None) -> list:
    return await asyncio.gather(
        *(
            fast.hold(account_id=account_id, units=units, request_id=f"r{i}", ttl_seconds=TTL, **kw)  # type: ignore[arg-type]
            for i in range(n)
        )
    )


async def test_concurrent_holds_on_one_balance_share_transactions_and_never_overdraw(
    fast: PostgresLedger, cg_funded_user: TestUser, cg_sessionmaker: async_sessionmaker[AsyncSession], cg_ledger_auditor
) -> None:
    held = await _hold_many(
        fast, 150, account_id=cg_funded_user.account_id, units=1000, membership_id=None, user_id=None
    )

    granted = [(f"r{i}", h) for i, h in enumerate(held) if h is not None]
    assert len(granted) == 100  # 1,000 credits = 100 holds of 10.00; the other 50 refused, nothing changed for them
    assert sorted(balance for _, (_, balance) in granted) == list(range(0, 100_000, 1000))
    assert fast.holds.batches < fast.holds.requests == 150  # several requests per transaction
    assert fast.holds.fallbacks == 0  # and none of them retried one by one
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, cg_funded_user.account_id) == Decimal("0.00")

    closes = await asyncio.gather(
        *(
            fast.close(
                hold_id=hold_id,
                request_id=request_id,
                status="settled" if n % 2 else "released",
                charge=730 if n % 2 else 0,
                description="test",
                user_id=cg_funded_user.id,
                usage=_usage(request_id),
            )
            for n, (request_id, (hold_id, _)) in enumerate(granted)
        )
    )
    assert [c[0] for c in closes if c is not None] == [730 if n % 2 else 0 for n in range(100)]
    assert fast.closes.batches < fast.closes.requests == 100
    assert fast.closes.fallbacks == 0
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, cg_funded_user.account_id) == Decimal(1000) - 50 * Decimal("7.30")
        assert await s.scalar(select(func.count()).select_from(UsageRecord)) == 100
        assert await s.scalar(select(func.count()).where(Hold.status == "open")) == 0
    report = cg_ledger_auditor()
    assert report.ok, str(report)


async def test_a_batch_keeps_each_members_allocation_on_a_shared_org_balance(
    fast: PostgresLedger,
    cg_user_factory: UserFactory,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_ledger_auditor,
) -> None:
    members = [await cg_user_factory(credits=Decimal(0)) for _ in range(4)]
    async with cg_sessionmaker() as s, s.begin():
        org = Org(name="shared")
        s.add(org)
        await s.flush()
        account = Account(org_id=org.id)
        s.add(account)
        seats = [Membership(org_id=org.id, user_id=m.id, allocation=2000) for m in members]
        s.add_all(seats)
        await s.flush()
        account_id, seat_ids = account.id, [seat.id for seat in seats]
        # 50.00 shared: less than the four allocations of 20.00 together
        await ledger.post_entry(s, account_id=account_id, amount=Decimal(50), type="purchase")

    results = await asyncio.gather(
        *(
            fast.hold(
                account_id=account_id,
                units=500,
                request_id=f"m{seat}-{i}",
                ttl_seconds=TTL,
                membership_id=seat,
                user_id=None,
            )
            for i in range(6)
            for seat in seat_ids
        )
    )
    assert sum(r is not None for r in results) == 10  # 50.00 / 5.00: the shared balance runs out first
    assert fast.holds.fallbacks == 0
    async with cg_sessionmaker() as s:
        used = dict((await s.execute(select(Membership.id, Membership.used).where(Membership.org_id == org.id))).all())
        assert all(u <= 2000 for u in used.values())  # no member past 20.00 (4 holds of 5.00)
        assert sum(used.values()) == 5000
        assert await s.scalar(select(Account.balance).where(Account.id == account_id)) == 0
    report = cg_ledger_auditor()
    assert report.ok, str(report)


async def test_one_bad_request_fails_alone_and_its_batch_mates_are_answered(
    fast: PostgresLedger, cg_funded_user: TestUser, cg_ledger_auditor
) -> None:
    import asyncpg

    first = await _hold(fast, cg_funded_user, "dup")
    assert first is not None
    fast.holds._in_flight, fast.holds._max_batch = 1, 4  # batches [dup ok0 ok1 ok2] [ok3 … ok6] [ok7 ok8 ok9]
    batch = ["dup"] + [f"ok{i}" for i in range(10)]  # a request id already held: the first batch's INSERT fails
    results = await asyncio.wait_for(
        asyncio.gather(
            *(_hold(fast, cg_funded_user, r) for r in batch),
            return_exceptions=True,
        ),
        timeout=30,  # every request answered: none left queued behind the failed batch
    )
    assert isinstance(results[0], asyncpg.UniqueViolationError)
    assert all(isinstance(r, tuple) for r in results[1:])
    assert (fast.holds.batches, fast.holds.fallbacks) == (4, 1)  # the lone first hold, then three; one retried
    assert cg_ledger_auditor().ok


async def test_a_cancelled_callers_hold_goes_straight_back(
    fast: PostgresLedger, cg_funded_user: TestUser, cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    waiting = asyncio.ensure_future(_hold(fast, cg_funded_user, "gone", user_id=cg_funded_user.id))
    await asyncio.sleep(0)  # queued and sent
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await fast.holds.drain()
    await fast.closes.drain()
    async with cg_sessionmaker() as s:
        hold = (await s.execute(select(Hold.id, Hold.status).where(Hold.request_id == "gone"))).one()
        assert hold.status == "released"
        of_hold = select(LedgerEntry.type, LedgerEntry.user_id).where(LedgerEntry.hold_id == hold.id)
        entries = (await s.execute(of_hold.order_by(LedgerEntry.id))).all()
        assert [tuple(e) for e in entries] == [("hold", cg_funded_user.id), ("release", cg_funded_user.id)]
        assert await ledger.balance_of(s, cg_funded_user.account_id) == Decimal(1000)


async def test_a_hold_closed_twice_at_once_is_charged_once(fast: PostgresLedger, cg_funded_user: TestUser) -> None:
    held = await _hold(fast, cg_funded_user, "twice")
    assert held is not None
    close = {
        **{"hold_id": held[0], "request_id": "twice", "status": "settled", "charge": 60},
        **{"description": None, "user_id": None, "usage": None},
    }
    answers = await asyncio.gather(*(fast.close(**close) for _ in range(3)))  # type: ignore[arg-type]
    assert sorted(answers, key=lambda a: a is None) == [(60, 100_000 - 60), None, None]


def lose_the_connection(fast: PostgresLedger, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every hold batch fails as if Postgres ended the connection; returns what gets retried alone, which must stay
    empty: the batch may have committed, and alone each request would be a second hold."""
    one_by_one: list[object] = []

    async def gone(*args: object) -> None:
        raise ConnectionDoesNotExistError("connection was closed in the middle of operation")

    async def alone(request: object) -> None:
        one_by_one.append(request)

    monkeypatch.setattr(fast.holds, "_run_batch", gone)
    monkeypatch.setattr(fast.holds, "_run_one", alone)
    return one_by_one


async def test_a_lost_connection_fails_the_whole_batch_and_nothing_is_retried_alone(
    fast: PostgresLedger, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one = lose_the_connection(fast, monkeypatch)
    fast.holds._max_batch = 1  # five batches: each fails, none stops the queue
    results = await asyncio.wait_for(
        asyncio.gather(
            *(_hold(fast, cg_funded_user, f"lost{i}") for i in range(5)),
            return_exceptions=True,
        ),
        timeout=30,
    )
    assert all(isinstance(r, ConnectionDoesNotExistError) for r in results)
    assert one_by_one == []


async def test_a_lost_connection_fails_every_request_of_a_batch_of_several(
    fast: PostgresLedger, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one = lose_the_connection(fast, monkeypatch)
    results = await asyncio.wait_for(
        asyncio.gather(*(_hold(fast, cg_funded_user, f"several{i}") for i in range(5)), return_exceptions=True),
        timeout=30,
    )
    assert all(isinstance(r, ConnectionDoesNotExistError) for r in results)
    assert fast.holds.batches < 5  # some batch held several requests
    assert (one_by_one, fast.holds.fallbacks) == ([], 0)


async def test_a_batch_of_one_that_fails_is_not_sent_again(
    fast: PostgresLedger, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one: list[object] = []

    async def refused(*args: object) -> None:
        raise ValueError("refused")

    async def alone(request: object) -> None:
        one_by_one.append(request)  # the same call again: for an ambiguous failure, a second hold

    monkeypatch.setattr(fast.holds, "_run_batch", refused)
    monkeypatch.setattr(fast.holds, "_run_one", alone)
    with pytest.raises(ValueError, match="refused"):
        await _hold(fast, cg_funded_user, "lone")
    assert (one_by_one, fast.holds.fallbacks) == ([], 0)


async def test_without_group_commit_each_request_is_its_own_call(
    database_url: str, cg_funded_user: TestUser, cg_ledger_auditor
) -> None:
    store = await PostgresLedger.connect(database_url, size=4, batch=False)
    try:
        held = await _hold_many(
            store, 20, account_id=cg_funded_user.account_id, units=100, membership_id=None, user_id=None
        )
        closed = await asyncio.gather(
            *(
                store.close(
                    hold_id=h[0],
                    request_id=f"r{i}",
                    status="released",
                    charge=0,
                    description=None,
                    user_id=None,
                    usage=None,
                )
                for i, h in enumerate(held)
            )
        )
    finally:
        await store.close_pool()
    assert all(h is not None for h in held)
    assert all(c is not None for c in closed)
    assert store.holds.requests == store.closes.requests == 0  # no queue: straight to the pool
    assert cg_ledger_auditor().ok


async def test_a_released_connection_is_not_reset_with_a_second_round_trip(database_url: str) -> None:
    store = await PostgresLedger.connect(database_url, size=1, batch=False)
    try:
        async with store._pool.acquire() as connection:
            await connection.execute("SET application_name = 'kept'")
        async with store._pool.acquire() as connection:  # the same one (size 1): asyncpg's RESET ALL would clear it
            assert await connection.fetchval("SHOW application_name") == "kept"
    finally:
        await store.close_pool()


async def test_a_close_never_touches_another_requests_hold(
    fast: PostgresLedger, cg_funded_user: TestUser, cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """A close names its hold by id and request: the id of a hold a crash lost may be another request's now."""
    held, other = await _hold(fast, cg_funded_user, "theirs"), await _hold(fast, cg_funded_user, "y")
    assert held is not None
    assert other is not None
    not_theirs = {"hold_id": held[0], "request_id": "lost", "status": "settled", "charge": 60, "description": None}
    closes = await asyncio.gather(  # one batch (creditgate_close_batch), then alone (creditgate_close)
        fast.close(**not_theirs, user_id=cg_funded_user.id, usage=_usage("lost")),  # type: ignore[arg-type]
        fast.close(
            hold_id=other[0],
            request_id="y",
            **{"status": "released", "charge": 0, "description": None},
            user_id=None,
            usage=None,
        ),  # type: ignore[arg-type]
    )
    assert closes[0] is None
    assert closes[1] is not None
    assert fast.closes.batches == 1
    assert await fast.close(**not_theirs, user_id=None, usage=None) is None  # type: ignore[arg-type]
    async with cg_sessionmaker() as s:
        hold = (await s.execute(select(Hold.status, Hold.charged).where(Hold.id == held[0]))).one()
        assert tuple(hold) == ("open", 0)
        assert await s.scalar(select(func.count()).select_from(UsageRecord)) == 0
        assert await ledger.balance_of(s, cg_funded_user.account_id) == Decimal(999)
    theirs = {"request_id": "theirs", "status": "released", "charge": 0, "description": None}
    assert await fast.close(hold_id=held[0], **theirs, user_id=None, usage=None) is not None  # type: ignore[arg-type]


async def test_an_asynchronous_hold_sets_only_its_own_transactions_commit(
    database_url: str, cg_funded_user: TestUser
) -> None:
    """``set_config(…, true)`` in ``creditgate_hold`` lasts to the end of the hold's transaction (its commit) and
    never into the session: a pooled connection's next settle commits synchronously."""
    import asyncpg

    conn = await asyncpg.connect(libpq_url(database_url))
    try:
        await conn.execute("SET synchronous_commit = on")
        async with conn.transaction():
            row = await conn.fetchrow(HOLD, cg_funded_user.account_id, 100, "async", TTL, None, None, True)
            assert await conn.fetchval("SHOW synchronous_commit") == "off"  # what this transaction commits with
        assert row["hold_id"] is not None
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.fetchrow(HOLD, cg_funded_user.account_id, 100, "alone", TTL, None, None, True)  # implicit
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.fetchrow(HOLD, cg_funded_user.account_id, 100, "sync", TTL, None, None, False)
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()
