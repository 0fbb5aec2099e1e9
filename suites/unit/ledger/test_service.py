"""app/ledger/service.py: holds, settles, releases, entries — and the invariants after each."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Hold, utcnow
from creditgate.errors import Conflict, InsufficientCredits, InvalidRequest, NotFound
from creditgate.ledger import service as ledger
from creditgate.ledger.sweeper import sweep_once
from creditgate.testing.gateway import TestUser, UserFactory

TTL = timedelta(minutes=10)
SM = async_sessionmaker[AsyncSession]


async def _balance(sm: SM, account_id: int) -> Decimal:
    async with sm() as s:
        return await ledger.balance_of(s, account_id)


async def _hold(sm: SM, user: TestUser, amount: str, request_id: str) -> int:
    async with sm() as s, s.begin():
        hold_id = await ledger.place_hold(
            s, account_id=user.account_id, amount=Decimal(amount), request_id=request_id, ttl=TTL
        )
        return hold_id


async def test_hold_then_settle_charges_actual_and_releases_rest(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user, "100", "r1")
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("900.00")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal("12.30"))
    assert (result.charged, result.released, result.late) == (Decimal("12.30"), Decimal("87.70"), False)
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("987.70")


async def test_settle_beyond_the_hold_takes_the_rest_from_the_balance(
    cg_sessionmaker: SM, cg_funded_user: TestUser
) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user, "10", "r1")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal("25"))
    assert result.charged == Decimal("25.00")
    assert result.released == Decimal("0.00")
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("975.00")


async def test_settle_beyond_the_hold_never_takes_the_balance_below_zero(
    cg_sessionmaker: SM, cg_user_factory: UserFactory
) -> None:
    user = await cg_user_factory(credits="12")
    hold_id = await _hold(cg_sessionmaker, user, "10", "r1")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal("25"))
    assert result.charged == Decimal("12.00")
    assert await _balance(cg_sessionmaker, user.account_id) == Decimal("0.00")


async def test_each_hold_closes_once(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user, "50", "r1")
    async with cg_sessionmaker() as s, s.begin():
        assert await ledger.release_hold(s, hold_id=hold_id, request_id="r1") is True
    async with cg_sessionmaker() as s, s.begin():
        assert await ledger.release_hold(s, hold_id=hold_id, request_id="r1") is False
    with pytest.raises(Conflict):
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal(1))
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("1000.00")


async def test_insufficient_hold_changes_nothing(cg_sessionmaker: SM, cg_user_factory: UserFactory) -> None:
    user = await cg_user_factory(credits="5")
    with pytest.raises(InsufficientCredits) as info:
        await _hold(cg_sessionmaker, user, "5.01", "r1")
    assert info.value.extra == {"reason": "insufficient_credits", "balance": "5.00", "required": "5.01"}
    assert await _balance(cg_sessionmaker, user.account_id) == Decimal("5.00")
    await _hold(cg_sessionmaker, user, "5.00", "r2")  # exactly the balance is fine
    assert await _balance(cg_sessionmaker, user.account_id) == Decimal("0.00")


async def test_duplicate_request_id_is_rejected(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    from sqlalchemy.exc import IntegrityError

    await _hold(cg_sessionmaker, cg_funded_user, "1", "same")
    with pytest.raises(IntegrityError):
        await _hold(cg_sessionmaker, cg_funded_user, "1", "same")
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("999.00")


async def test_sweeper_releases_expired_holds_and_late_settle_charges_balance(
    cg_sessionmaker: SM, cg_funded_user: TestUser
) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user, "40", "r1")
    fresh_id = await _hold(cg_sessionmaker, cg_funded_user, "10", "r2")
    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Hold).where(Hold.id == hold_id).values(expires_at=utcnow() - TTL))
    assert await sweep_once(cg_sessionmaker) == 1
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("990.00")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal("3.5"))
    assert (result.charged, result.late) == (Decimal("3.50"), True)
    async with cg_sessionmaker() as s:
        statuses = {row.id: row.status for row in await s.execute(select(Hold.id, Hold.status))}
    assert statuses == {hold_id: "expired", fresh_id: "open"}
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("986.50")


async def test_idempotent_entries(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    kw = {
        "account_id": cg_funded_user.account_id,
        "amount": Decimal("25"),
        "type": "purchase",
        "idempotency_key": "evt_1",
    }
    async with cg_sessionmaker() as s, s.begin():
        first, created = await ledger.post_entry(s, **kw)
    assert created
    async with cg_sessionmaker() as s, s.begin():
        again, created = await ledger.post_entry(s, **kw)
    assert (again.id, created) == (first.id, False)
    with pytest.raises(Conflict):
        async with cg_sessionmaker() as s, s.begin():
            await ledger.post_entry(s, **{**kw, "amount": Decimal("26")})
    assert await _balance(cg_sessionmaker, cg_funded_user.account_id) == Decimal("1025.00")


@pytest.mark.parametrize(
    ("amount", "type_"), [("0", "bonus"), ("5", "api_usage"), ("-5", "bonus"), ("5", "refund"), ("0.001", "bonus")]
)
async def test_post_entry_rejects_bad_input(
    cg_sessionmaker: SM, cg_funded_user: TestUser, amount: str, type_: str
) -> None:
    with pytest.raises((InvalidRequest, ValueError)):
        async with cg_sessionmaker() as s, s.begin():
            await ledger.post_entry(s, account_id=cg_funded_user.account_id, amount=Decimal(amount), type=type_)


async def test_debit_cannot_overdraw(cg_sessionmaker: SM, cg_user_factory: UserFactory) -> None:
    user = await cg_user_factory(credits="3")
    with pytest.raises(InsufficientCredits):
        async with cg_sessionmaker() as s, s.begin():
            await ledger.post_entry(s, account_id=user.account_id, amount=Decimal("-3.01"), type="adjustment")
    async with cg_sessionmaker() as s, s.begin():
        await ledger.post_entry(s, account_id=user.account_id, amount=Decimal("-3"), type="adjustment")
    assert await _balance(cg_sessionmaker, user.account_id) == Decimal("0.00")


async def test_unknown_ids(cg_sessionmaker: SM) -> None:
    async with cg_sessionmaker() as s:
        with pytest.raises(NotFound):
            await ledger.balance_of(s, 999)
        with pytest.raises(NotFound):
            await ledger.settle_hold(s, hold_id=999, request_id="r999", charge=Decimal(1))
