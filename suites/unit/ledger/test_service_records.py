"""app/ledger/service.py, what the books record besides the balance: hold statuses and times, who and what each
entry names, an org member's allocation across a hold's life, the sweeper's choice of holds, error messages."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Account, Hold, LedgerEntry, Membership, Org, User, utcnow
from creditgate.errors import Conflict, InsufficientCredits, InvalidRequest, NotFound
from creditgate.ledger import service as ledger
from creditgate.ledger.sweeper import sweep_once
from creditgate.testing.gateway import TestUser, UserFactory

TTL = timedelta(minutes=10)
SM = async_sessionmaker[AsyncSession]


async def _hold(sm: SM, account_id: int, amount: str, request_id: str, **kw: int) -> int:
    async with sm() as s, s.begin():
        return await ledger.place_hold(
            s, account_id=account_id, amount=Decimal(amount), request_id=request_id, ttl=TTL, **kw
        )


async def _hold_row(sm: SM, hold_id: int) -> Hold:
    async with sm() as s:
        hold: Hold = await s.get_one(Hold, hold_id)
        return hold


async def _entries(sm: SM, hold_id: int) -> list[tuple[str, int, int | None, str | None]]:
    async with sm() as s:
        rows = await s.execute(
            select(LedgerEntry.type, LedgerEntry.amount, LedgerEntry.user_id, LedgerEntry.description)
            .where(LedgerEntry.hold_id == hold_id)
            .order_by(LedgerEntry.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_a_settled_hold_records_its_status_charge_and_time(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    before = utcnow()
    hold_id = await _hold(cg_sessionmaker, cg_funded_user.account_id, "10", "r1", user_id=cg_funded_user.id)
    async with cg_sessionmaker() as s, s.begin():
        await ledger.settle_hold(
            s, hold_id=hold_id, request_id="r1", charge=Decimal("2.5"), description="m via p", user_id=cg_funded_user.id
        )
    hold = await _hold_row(cg_sessionmaker, hold_id)
    assert (hold.status, hold.charged) == ("settled", 250)
    assert hold.closed_at is not None
    assert hold.closed_at.replace(tzinfo=None) >= before.replace(tzinfo=None)
    assert await _entries(cg_sessionmaker, hold_id) == [
        ("hold", -1000, cg_funded_user.id, None),
        ("release", 1000, cg_funded_user.id, None),
        ("api_usage", -250, cg_funded_user.id, "m via p"),
    ]


async def test_a_released_hold_records_its_status_and_who(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user.account_id, "10", "r1", user_id=cg_funded_user.id)
    async with cg_sessionmaker() as s, s.begin():
        assert await ledger.release_hold(s, hold_id=hold_id, request_id="r1", user_id=cg_funded_user.id)
    hold = await _hold_row(cg_sessionmaker, hold_id)
    assert (hold.status, hold.charged) == ("released", 0)
    assert hold.closed_at is not None
    assert await _entries(cg_sessionmaker, hold_id) == [
        ("hold", -1000, cg_funded_user.id, None),
        ("release", 1000, cg_funded_user.id, None),
    ]


async def _org_member(sm: SM, user: TestUser, *, org_credits: str, allocation: str) -> tuple[int, int]:
    """``user`` as a member of a new org holding ``org_credits``: (org account id, membership id)."""
    async with sm() as s, s.begin():
        org = Org(name=f"org-{user.id}")
        s.add(org)
        await s.flush()
        account = Account(org_id=org.id, balance=0)
        membership = Membership(
            org_id=org.id, user_id=user.id, role="member", allocation=int(Decimal(allocation) * 100), used=0
        )
        s.add_all([account, membership])
        await s.flush()
        await ledger.post_entry(s, account_id=account.id, amount=Decimal(org_credits), type="adjustment")
        return account.id, membership.id


async def _used(sm: SM, membership_id: int) -> int:
    async with sm() as s:
        return (await s.get_one(Membership, membership_id)).used


@pytest.mark.critical
async def test_an_org_members_allocation_follows_each_hold(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    account_id, membership_id = await _org_member(cg_sessionmaker, cg_funded_user, org_credits="100", allocation="50")
    kw = {"membership_id": membership_id, "user_id": cg_funded_user.id}
    settled = await _hold(cg_sessionmaker, account_id, "20", "r1", **kw)
    released = await _hold(cg_sessionmaker, account_id, "15", "r2", **kw)
    assert await _used(cg_sessionmaker, membership_id) == 3500

    async with cg_sessionmaker() as s, s.begin():
        await ledger.settle_hold(s, hold_id=settled, request_id="r1", charge=Decimal("4"))
    assert await _used(cg_sessionmaker, membership_id) == 1900  # 20 held → 4 charged: 16 back to the allocation
    async with cg_sessionmaker() as s, s.begin():
        await ledger.release_hold(s, hold_id=released, request_id="r2")
    assert await _used(cg_sessionmaker, membership_id) == 400  # only what was charged stays used

    expired = await _hold(cg_sessionmaker, account_id, "30", "r3", **kw)
    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Hold).where(Hold.id == expired).values(expires_at=utcnow() - TTL))
    assert await sweep_once(cg_sessionmaker) == 1
    assert await _used(cg_sessionmaker, membership_id) == 400
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=expired, request_id="r3", charge=Decimal("6"))
    assert result.late
    assert await _used(cg_sessionmaker, membership_id) == 1000  # a late charge counts against the allocation too
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, account_id) == Decimal("90.00")


async def test_the_sweeper_expires_only_open_holds_past_their_expiry_oldest_first(
    cg_sessionmaker: SM, cg_funded_user: TestUser, caplog: pytest.LogCaptureFixture
) -> None:
    account = cg_funded_user.account_id
    ids = [await _hold(cg_sessionmaker, account, "1", f"r{i}") for i in range(4)]
    now = utcnow()
    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Hold).where(Hold.id.in_(ids[:3])).values(expires_at=now - TTL))
        await s.execute(update(Hold).where(Hold.id == ids[3]).values(expires_at=now))
        assert await ledger.release_hold(s, hold_id=ids[2], request_id="r2")  # past its expiry, but closed already
    named = [(hold_id, f"r{i}") for i, hold_id in enumerate(ids)]
    async with cg_sessionmaker() as s:
        assert await ledger.expired_holds(s, now=now) == named[:2]  # expiring exactly now is not yet expired
        assert await ledger.expired_holds(s, now=now, limit=1) == named[:1]
        assert await ledger.expired_holds(s, now=now + timedelta(seconds=1)) == [named[0], named[1], named[3]]

    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Hold).where(Hold.id == ids[3]).values(expires_at=now + TTL))
    with caplog.at_level(logging.WARNING, logger="creditgate.ledger.sweeper"):
        assert await sweep_once(cg_sessionmaker) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "creditgate.ledger.sweeper"] == [
        "released 2 expired holds"
    ]
    statuses = [(await _hold_row(cg_sessionmaker, i)).status for i in ids]
    assert statuses == ["expired", "expired", "released", "open"]


async def test_ledger_errors_say_what_is_wrong(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    hold_id = await _hold(cg_sessionmaker, cg_funded_user.account_id, "5", "r1")
    with pytest.raises(InvalidRequest) as negative:
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal("-1"))
    assert negative.value.message == "a charge cannot be negative"
    kw = {"account_id": cg_funded_user.account_id, "type": "purchase", "idempotency_key": "evt_9"}
    async with cg_sessionmaker() as s, s.begin():
        await ledger.post_entry(s, amount=Decimal(5), **kw)
    with pytest.raises(Conflict) as conflict:
        async with cg_sessionmaker() as s, s.begin():
            await ledger.post_entry(s, amount=Decimal(6), **kw)
    assert conflict.value.message == "idempotency key 'evt_9' was already used with different fields"
    assert conflict.value.extra == {"idempotency_key": "evt_9"}


@pytest.mark.critical
async def test_an_allocation_refusal_says_why_and_reserves_nothing(
    cg_sessionmaker: SM, cg_funded_user: TestUser
) -> None:
    account_id, membership_id = await _org_member(cg_sessionmaker, cg_funded_user, org_credits="100", allocation="10")
    kw = {"membership_id": membership_id, "user_id": cg_funded_user.id}
    await _hold(cg_sessionmaker, account_id, "7", "r1", **kw)
    with pytest.raises(InsufficientCredits) as refused:
        await _hold(cg_sessionmaker, account_id, "3.01", "r2", **kw)
    assert refused.value.message == (
        "your organization allocation is exhausted: 3.00 of 10.00 left, this request may cost up to 3.01"
    )
    assert refused.value.extra == {
        "reason": "allocation_exhausted",
        "allocation": "10.00",
        "balance": "3.00",
        "required": "3.01",
    }
    assert await _used(cg_sessionmaker, membership_id) == 700
    await _hold(cg_sessionmaker, account_id, "3", "r3", **kw)  # exactly what is left still fits
    assert await _used(cg_sessionmaker, membership_id) == 1000

    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Membership).where(Membership.id == membership_id).values(allocation=0, used=0))
    with pytest.raises(InsufficientCredits) as none:
        await _hold(cg_sessionmaker, account_id, "1", "r4", **kw)
    assert none.value.message == "you have no credit allocation in your organization; ask an org admin for one"
    assert none.value.extra == {
        "reason": "no_allocation",
        "allocation": "0.00",
        "balance": "0.00",
        "required": "1",
    }
    assert await _used(cg_sessionmaker, membership_id) == 0


async def test_held_is_the_sum_of_this_accounts_open_holds(
    cg_sessionmaker: SM, cg_funded_user: TestUser, cg_user_factory: UserFactory
) -> None:
    other = await cg_user_factory(credits="100")
    account = cg_funded_user.account_id
    async with cg_sessionmaker() as s:
        assert await ledger.held_amount(s, account) == Decimal("0.00")
    first = await _hold(cg_sessionmaker, account, "2.5", "r1")
    await _hold(cg_sessionmaker, account, "4", "r2")
    await _hold(cg_sessionmaker, other.account_id, "9", "r3")
    async with cg_sessionmaker() as s, s.begin():
        await ledger.settle_hold(s, hold_id=first, request_id="r1", charge=Decimal(1))
    async with cg_sessionmaker() as s:
        assert await ledger.held_amount(s, account) == Decimal("4.00")
        assert await ledger.held_amount(s, other.account_id) == Decimal("9.00")


async def test_signed_sums_per_entry_type(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    account = cg_funded_user.account_id
    async with cg_sessionmaker() as s, s.begin():
        await ledger.post_entry(s, account_id=account, amount=Decimal(5), type="bonus")
        await ledger.post_entry(s, account_id=account, amount=Decimal(-2), type="refund")
    async with cg_sessionmaker() as s:
        row = (
            await s.execute(
                select(
                    ledger.signed_sum("bonus"),
                    ledger.signed_sum("refund", negate=True),
                    ledger.signed_sum("refund"),
                    ledger.signed_sum("api_usage"),
                ).where(LedgerEntry.account_id == account)
            )
        ).one()
    assert tuple(row) == (100_000 + 500, 200, -200, 0)  # the harness funds the user with a 1,000-credit bonus


async def test_the_sweeper_loop_survives_a_failed_round(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from creditgate.ledger import sweeper

    rounds: list[int] = []

    async def flaky(sessionmaker: object) -> int:
        assert sessionmaker == "the sessionmaker"
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("database went away")
        if len(rounds) == 3:
            raise asyncio.CancelledError
        return 0

    original = sweeper.sweep_once
    sweeper.sweep_once = flaky  # type: ignore[assignment]
    try:
        with pytest.raises(asyncio.CancelledError):
            await sweeper.run_forever("the sessionmaker", interval=0.01)  # type: ignore[arg-type]
    finally:
        sweeper.sweep_once = original
    assert len(rounds) == 3
    assert [r.getMessage() for r in caplog.records] == ["hold sweep failed"]


def _counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.critical
async def test_a_late_settle_charges_the_full_price_the_balance_allows_and_says_so(
    cg_sessionmaker: SM, cg_user_factory: UserFactory
) -> None:
    """The sweeper released the hold before the request finished (issue 26, F3): the answer was served, so the
    whole price is charged from the balance — not capped at the expired hold — and never below zero."""
    user = await cg_user_factory(credits="20")

    async def expired_hold(amount: str, request_id: str) -> int:
        hold_id = await _hold(cg_sessionmaker, user.account_id, amount, request_id, user_id=user.id)
        async with cg_sessionmaker() as s, s.begin():
            await s.execute(update(Hold).where(Hold.id == hold_id).values(expires_at=utcnow() - TTL))
        assert await sweep_once(cg_sessionmaker) == 1
        return hold_id

    beyond = await expired_hold("3", "r1")
    charged_before = _counter("creditgate_credits_charged_total")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(
            s, hold_id=beyond, request_id="r1", charge=Decimal("5"), description="m via p", user_id=user.id
        )
    assert result == ledger.SettleResult(Decimal("5.00"), Decimal("0.00"), late=True, balance=Decimal("15.00"))
    assert _counter("creditgate_credits_charged_total") - charged_before == pytest.approx(5.0)  # a float counter
    assert (await _entries(cg_sessionmaker, beyond))[-1] == (
        "api_usage",
        -500,
        user.id,
        "m via p (settled after hold expiry)",
    )

    short = await expired_hold("7", "r2")
    async with cg_sessionmaker() as s, s.begin():
        await ledger.post_entry(s, account_id=user.account_id, amount=Decimal("-13"), type="adjustment")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=short, request_id="r2", charge=Decimal("6"))
    assert result == ledger.SettleResult(Decimal("2.00"), Decimal("0.00"), late=True, balance=Decimal("0.00"))
    assert (await _entries(cg_sessionmaker, short))[-1] == ("api_usage", -200, None, " (settled after hold expiry)")

    empty = await _hold(cg_sessionmaker, (await cg_user_factory(credits="1")).account_id, "1", "r3")
    async with cg_sessionmaker() as s, s.begin():
        await s.execute(update(Hold).where(Hold.id == empty).values(expires_at=utcnow() - TTL))
    assert await sweep_once(cg_sessionmaker) == 1
    async with cg_sessionmaker() as s, s.begin():
        hold = await s.get_one(Hold, empty)
        await ledger.post_entry(s, account_id=hold.account_id, amount=Decimal("-1"), type="adjustment")
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_hold(s, hold_id=empty, request_id="r3", charge=Decimal("1"))
    assert result == ledger.SettleResult(Decimal("0.00"), Decimal("0.00"), late=True, balance=Decimal("0.00"))
    assert [e[0] for e in await _entries(cg_sessionmaker, empty)] == ["hold", "release"]  # no zero charge entry


async def test_settles_and_releases_are_counted_for_prometheus(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    names = ("creditgate_credits_charged_total", "creditgate_credits_released_total")
    before = [_counter(n) for n in names]
    settled = await _hold(cg_sessionmaker, cg_funded_user.account_id, "10", "r1")
    released = await _hold(cg_sessionmaker, cg_funded_user.account_id, "4", "r2")
    async with cg_sessionmaker() as s, s.begin():
        await ledger.settle_hold(s, hold_id=settled, request_id="r1", charge=Decimal("2.5"))
        await ledger.release_hold(s, hold_id=released, request_id="r2")
    assert [_counter(n) - b for n, b in zip(names, before, strict=True)] == pytest.approx([2.5, 7.5 + 4.0])


async def test_each_members_allocation_is_their_own(cg_sessionmaker: SM, cg_user_factory: UserFactory) -> None:
    first, second = await cg_user_factory(credits="0"), await cg_user_factory(credits="0")
    account_id, first_membership = await _org_member(cg_sessionmaker, first, org_credits="100", allocation="10")
    async with cg_sessionmaker() as s, s.begin():
        org_id = (await s.get_one(Membership, first_membership)).org_id
        other = Membership(org_id=org_id, user_id=second.id, role="member", allocation=1000, used=0)
        s.add(other)
        await s.flush()
        second_membership = other.id
    await _hold(cg_sessionmaker, account_id, "4", "r1", membership_id=first_membership)
    assert (await _used(cg_sessionmaker, first_membership), await _used(cg_sessionmaker, second_membership)) == (
        400,
        0,
    )
    async with cg_sessionmaker() as s, s.begin():  # allocation lowered below what is used: nothing left, not less
        await s.execute(update(Membership).where(Membership.id == first_membership).values(allocation=300))
    with pytest.raises(InsufficientCredits) as refused:
        await _hold(cg_sessionmaker, account_id, "1", "r2", membership_id=first_membership)
    assert refused.value.message.startswith("your organization allocation is exhausted: 0.00 of 3.00 left")


async def test_missing_accounts_and_holds_are_named(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    async with cg_sessionmaker() as s:
        with pytest.raises(NotFound) as account:
            await ledger.balance_of(s, 999)
        with pytest.raises(NotFound) as hold:
            await ledger.settle_hold(s, hold_id=999, request_id="r999", charge=Decimal(1))
    assert (account.value.message, hold.value.message) == (
        "account 999 does not exist",
        "hold 999 of request r999 does not exist",
    )
    hold_id = await _hold(cg_sessionmaker, cg_funded_user.account_id, "1", "r1")
    async with cg_sessionmaker() as s, s.begin():
        await ledger.release_hold(s, hold_id=hold_id, request_id="r1")
    with pytest.raises(Conflict) as closed:
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_hold(s, hold_id=hold_id, request_id="r1", charge=Decimal(1))
    assert closed.value.message == f"hold {hold_id} is already released"


async def test_sums_over_no_entries_are_zero(cg_sessionmaker: SM) -> None:
    async with cg_sessionmaker() as s:
        row = (
            await s.execute(
                select(ledger.signed_sum("bonus"), ledger.signed_sum("refund", negate=True)).where(
                    LedgerEntry.account_id == 999
                )
            )
        ).one()
    assert tuple(row) == (0, 0)


async def test_an_entry_keeps_its_description_and_an_account_its_owner(
    cg_sessionmaker: SM, cg_funded_user: TestUser
) -> None:
    async with cg_sessionmaker() as s, s.begin():
        entry, _ = await ledger.post_entry(
            s, account_id=cg_funded_user.account_id, amount=Decimal(5), type="bonus", description="welcome back"
        )
        account = await ledger.open_account(s, user_id=None)
        newcomer = User(email="newcomer@example.test")
        s.add(newcomer)
        await s.flush()
        owned = await ledger.open_account(s, user_id=newcomer.id)
    async with cg_sessionmaker() as s:
        assert (await s.get_one(LedgerEntry, entry.id)).description == "welcome back"
        assert (await s.get_one(Account, account.id)).user_id is None
        assert (await s.get_one(Account, owned.id)).user_id == newcomer.id
        assert await ledger.balance_of(s, owned.id) == Decimal("0.00")


async def _refusal(sm: SM, call: object) -> tuple[str, dict[str, object]]:
    from creditgate.errors import GatewayError

    with pytest.raises(GatewayError) as refused:
        async with sm() as s, s.begin():
            await call(s)  # type: ignore[operator]
    return refused.value.message, refused.value.extra


async def test_every_ledger_refusal_says_what_and_why(cg_sessionmaker: SM, cg_user_factory: UserFactory) -> None:
    user = await cg_user_factory(credits="3")
    account = user.account_id

    def entry(amount: str, type_: str) -> object:
        return lambda s: ledger.post_entry(s, account_id=account, amount=Decimal(amount), type=type_)

    def hold(amount: str, **kw: int) -> object:
        return lambda s: ledger.place_hold(s, amount=Decimal(amount), request_id="r", ttl=TTL, **kw)

    assert await _refusal(cg_sessionmaker, entry("0", "bonus")) == ("amount must not be zero", {})
    assert await _refusal(cg_sessionmaker, entry("5", "api_usage")) == (
        "a positive 'api_usage' entry is not allowed",
        {},
    )
    assert await _refusal(cg_sessionmaker, entry("-0.01", "bonus")) == ("a negative 'bonus' entry is not allowed", {})
    assert await _refusal(cg_sessionmaker, entry("-3.01", "adjustment")) == (
        "balance 3.00 is less than 3.01",
        {"balance": "3.00", "required": "3.01"},
    )
    assert await _refusal(cg_sessionmaker, hold("-1", account_id=account)) == ("a hold cannot be negative", {})
    assert await _refusal(cg_sessionmaker, hold("3.01", account_id=account)) == (
        "insufficient credits: balance 3.00, this request may cost up to 3.01",
        {"reason": "insufficient_credits", "balance": "3.00", "required": "3.01"},
    )
    org_account, membership = await _org_member(cg_sessionmaker, user, org_credits="2", allocation="50")
    assert await _refusal(cg_sessionmaker, hold("2.50", account_id=org_account, membership_id=membership)) == (
        "the organization has 2.00 credits left, this request may cost up to 2.50",
        {"reason": "org_insufficient_credits", "balance": "2.00", "required": "2.50"},
    )
    assert await _used(cg_sessionmaker, membership) == 0  # the refused hold reserved nothing of the allocation


async def test_holds_are_counted_for_prometheus(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    before = _counter("creditgate_credits_held_total")
    await _hold(cg_sessionmaker, cg_funded_user.account_id, "2.25", "r1")
    assert _counter("creditgate_credits_held_total") - before == pytest.approx(2.25)


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_a_close_names_its_hold_by_id_and_request(
    cg_sessionmaker: SM, cg_funded_user: TestUser, cg_user_factory: UserFactory
) -> None:
    """A hold lost in a crash gives its id to the next hold: the lost request's settle or release, by that id, must
    never close the other request's hold (another tenant's, here)."""
    other = await cg_user_factory(credits="10")
    theirs = await _hold(cg_sessionmaker, other.account_id, "4", "theirs")
    with pytest.raises(ledger.HoldLost):
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_hold(s, hold_id=theirs, request_id="lost", charge=Decimal(3), user_id=cg_funded_user.id)
    async with cg_sessionmaker() as s, s.begin():
        assert await ledger.release_hold(s, hold_id=theirs, request_id="lost") is False
    hold = await _hold_row(cg_sessionmaker, theirs)
    assert (hold.status, hold.charged, hold.account_id) == ("open", 0, other.account_id)
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, other.account_id) == Decimal("6.00")


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_a_lost_hold_is_settled_from_what_is_left_once(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    """The upstream answered a request whose hold the database lost: the full price from the balance and the
    member's allocation (never below zero), booked so the auditor balances, and never twice."""
    from sqlalchemy.exc import IntegrityError

    account_id, membership_id = await _org_member(cg_sessionmaker, cg_funded_user, org_credits="100", allocation="3")
    lost = {"account_id": account_id, "membership_id": membership_id, "request_id": "lost", "user_id": None}
    async with cg_sessionmaker() as s, s.begin():
        result = await ledger.settle_lost_hold(s, **lost, charge=Decimal(5), description="m via p")
    assert result == ledger.SettleResult(Decimal("3.00"), Decimal("0.00"), late=True, balance=Decimal("97.00"))
    assert await _used(cg_sessionmaker, membership_id) == 300  # the allocation's room bounds it, as for a late settle
    async with cg_sessionmaker() as s:
        hold_id = await s.scalar(select(Hold.id).where(Hold.request_id == "lost"))
    assert hold_id is not None
    hold = await _hold_row(cg_sessionmaker, hold_id)
    assert (hold.status, hold.amount, hold.charged) == ("settled", 0, 300)
    assert await _entries(cg_sessionmaker, hold_id) == [
        ("hold", 0, None, None),
        ("release", 0, None, None),
        ("api_usage", -300, None, "m via p (settled after the database lost the hold)"),
    ]
    with pytest.raises(IntegrityError):  # a second attempt for the request: refused, not charged again
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_lost_hold(s, **lost, charge=Decimal(5))
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, account_id) == Decimal("97.00")
