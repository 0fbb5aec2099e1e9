"""Every balance change goes through here, as a conditional update plus a ledger row in one transaction.

Callers own the transaction (``async with session.begin(): ...``); these functions never commit.
The invariant the auditor checks after every test: for each account,
``balance == sum(ledger_entries.amount)`` and ``balance >= 0``.

Entry types (signed hundredths of a credit):
``purchase`` +, ``bonus`` +, ``adjustment`` ±, ``refund`` −, ``hold`` −, ``release`` +, ``api_usage`` −.

A hold is named by its id *and* its request (``request_id``, unique): a hold committed asynchronously (the fast
ledger's ``creditgate_hold``) is lost if Postgres crashes before the settle, and the next hold may be given its id.
A settle for a lost hold raises ``HoldLost``; ``settle_lost_hold`` then charges the request from the balance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import Account, Hold, LedgerEntry, Membership, utcnow
from creditgate.errors import Conflict, InsufficientCredits, InvalidRequest, NotFound
from creditgate.money import from_hundredths, to_hundredths
from creditgate.observability import metrics

CREDIT_TYPES = frozenset({"purchase", "bonus", "adjustment"})
DEBIT_TYPES = frozenset({"adjustment", "refund"})


@dataclass(frozen=True, slots=True)
class _Closed:
    account_id: int
    amount: int
    charged: int
    membership_id: int | None


class HoldLost(NotFound):
    """No hold of this request exists: the database lost it (a crash after its asynchronous commit), or it never
    existed. The request's own settle charges it with ``settle_lost_hold``."""


@dataclass(frozen=True, slots=True)
class SettleResult:
    charged: Decimal
    released: Decimal
    late: bool  # the hold had already been released by the sweeper; charged what the balance allowed
    balance: Decimal  # the account's balance right after


async def open_account(session: AsyncSession, *, user_id: int | None) -> Account:
    account = Account(user_id=user_id, balance=0)
    session.add(account)
    await session.flush()
    return account


async def balance_of(session: AsyncSession, account_id: int) -> Decimal:
    units = await session.scalar(select(Account.balance).where(Account.id == account_id))
    if units is None:
        raise NotFound(f"account {account_id} does not exist")
    return from_hundredths(units)


async def _move(session: AsyncSession, *, account_id: int, delta: int, require_funds: bool = True) -> int | None:
    """Apply ``delta`` to the balance in one conditional UPDATE (locking the row); the new balance,
    or ``None`` when a debit would take it below zero."""
    condition: ColumnElement[bool] = Account.id == account_id
    if delta < 0 and require_funds:
        condition = condition & (Account.balance >= -delta)
    balance: int | None = await session.scalar(
        update(Account).where(condition).values(balance=Account.balance + delta).returning(Account.balance)
    )
    return balance


async def _append(session: AsyncSession, *rows: dict[str, object]) -> None:
    """Append ledger rows with one INSERT (hot path: no ORM objects)."""
    await session.execute(insert(LedgerEntry), list(rows))  # created_at: the column's default


async def _write(
    session: AsyncSession,
    *,
    account_id: int,
    delta: int,
    type: str,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> LedgerEntry | None:
    """Apply ``delta`` to the balance (refusing to go below zero) and append its ledger row."""
    new_balance = await _move(session, account_id=account_id, delta=delta)
    if new_balance is None:
        return None
    entry = LedgerEntry(
        account_id=account_id,
        type=type,
        amount=delta,
        balance_after=new_balance,
        idempotency_key=idempotency_key,
        description=description,
    )
    session.add(entry)
    await session.flush()
    return entry


async def _replayed(
    session: AsyncSession, *, idempotency_key: str, account_id: int, delta: int, type: str
) -> LedgerEntry | None:
    """The earlier entry for this key if its fields match; ``Conflict`` if they differ."""
    existing = await session.scalar(select(LedgerEntry).where(LedgerEntry.idempotency_key == idempotency_key))
    if existing is None:
        return None
    if (existing.account_id, existing.amount, existing.type) != (account_id, delta, type):
        raise Conflict(
            f"idempotency key {idempotency_key!r} was already used with different fields",
            idempotency_key=idempotency_key,
        )
    return existing


async def post_entry(
    session: AsyncSession,
    *,
    account_id: int,
    amount: Decimal,
    type: str,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> tuple[LedgerEntry, bool]:
    """Credit (amount > 0) or debit (amount < 0) an account outside the hold cycle.

    Returns ``(entry, created)``; a repeat of the same idempotency key with identical fields
    returns the first entry and ``created=False``.
    """
    delta = to_hundredths(amount)
    if delta == 0:
        raise InvalidRequest("amount must not be zero")
    allowed = CREDIT_TYPES if delta > 0 else DEBIT_TYPES
    if type not in allowed:
        raise InvalidRequest(f"a {'positive' if delta > 0 else 'negative'} {type!r} entry is not allowed")
    if idempotency_key is not None:
        earlier = await _replayed(
            session, idempotency_key=idempotency_key, account_id=account_id, delta=delta, type=type
        )
        if earlier is not None:
            return earlier, False
    entry = await _write(
        session,
        account_id=account_id,
        delta=delta,
        type=type,
        idempotency_key=idempotency_key,
        description=description,
    )
    if entry is None:
        balance = await balance_of(session, account_id)
        raise InsufficientCredits(
            f"balance {balance} is less than {-amount}", balance=str(balance), required=str(-amount)
        )
    return entry, True


async def place_hold(
    session: AsyncSession,
    *,
    account_id: int,
    amount: Decimal,
    request_id: str,
    ttl: timedelta,
    membership_id: int | None = None,
    user_id: int | None = None,
) -> int:
    """Reserve ``amount`` for a request, atomically, and return the hold's id; ``InsufficientCredits``
    if the balance is short.

    For an org member the reservation also counts against their allocation (conditionally, so
    concurrent members can overdraw neither the org nor their own allocation).
    """
    units = to_hundredths(amount)
    if units < 0:
        raise InvalidRequest("a hold cannot be negative")
    if membership_id is not None:
        await _reserve_allocation(session, membership_id=membership_id, units=units, amount=amount)
    new_balance = await _move(session, account_id=account_id, delta=-units)
    if new_balance is None:
        balance = await balance_of(session, account_id)
        whose = "the organization has" if membership_id is not None else "insufficient credits:"
        raise InsufficientCredits(
            f"{whose} balance {balance}, this request may cost up to {amount}"
            if membership_id is None
            else f"{whose} {balance} credits left, this request may cost up to {amount}",
            reason="org_insufficient_credits" if membership_id is not None else "insufficient_credits",
            balance=str(balance),
            required=str(amount),
        )
    now = utcnow()
    hold_id: int = (
        await session.scalar(
            insert(Hold)
            .values(
                account_id=account_id,
                request_id=request_id,
                amount=units,
                status="open",
                charged=0,
                created_at=now,
                expires_at=now + ttl,
                membership_id=membership_id,
            )
            .returning(Hold.id)
        )
        or 0
    )
    await _append(
        session,
        {
            "account_id": account_id,
            "type": "hold",
            "amount": -units,
            "balance_after": new_balance,
            "hold_id": hold_id,
            "user_id": user_id,
        },
    )
    metrics.credits(session, held=amount)
    return hold_id


async def _reserve_allocation(session: AsyncSession, *, membership_id: int, units: int, amount: Decimal) -> None:
    reserved = await session.scalar(
        update(Membership)
        .where(Membership.id == membership_id, Membership.used + units <= Membership.allocation)
        .values(used=Membership.used + units)
        .returning(Membership.id)
    )
    if reserved is not None:
        return
    row = (
        await session.execute(select(Membership.allocation, Membership.used).where(Membership.id == membership_id))
    ).one_or_none()
    if row is None:  # the seat was removed after this request looked the caller up: never a 500
        raise InsufficientCredits(
            "your organization seat was removed; retry to be charged to your own account",
            reason="no_allocation",
            allocation="0.00",
            balance="0.00",
            required=str(amount),
        )
    left = from_hundredths(max(row.allocation - row.used, 0))
    if row.allocation == 0:
        raise InsufficientCredits(
            "you have no credit allocation in your organization; ask an org admin for one",
            reason="no_allocation",
            allocation="0.00",
            balance="0.00",
            required=str(amount),
        )
    raise InsufficientCredits(
        f"your organization allocation is exhausted: {left} of {from_hundredths(row.allocation)} left, "
        f"this request may cost up to {amount}",
        reason="allocation_exhausted",
        allocation=str(from_hundredths(row.allocation)),
        balance=str(left),
        required=str(amount),
    )


async def _adjust_allocation(session: AsyncSession, membership_id: int | None, delta: int) -> None:
    if membership_id is not None and delta:
        await session.execute(
            update(Membership).where(Membership.id == membership_id).values(used=Membership.used + delta)
        )


async def _close(
    session: AsyncSession, *, hold_id: int, request_id: str, status: str, charge: int = 0
) -> _Closed | None:
    """Move the open hold of ``hold_id`` and ``request_id`` to ``status``, charging ``charge`` capped at the hold;
    ``None`` if no such hold was open (so each hold closes once, and never another request's under a reused id)."""
    row = (
        await session.execute(
            update(Hold)
            .where(Hold.id == hold_id, Hold.request_id == request_id, Hold.status == "open")
            .values(status=status, charged=case((Hold.amount < charge, Hold.amount), else_=charge), closed_at=utcnow())
            .returning(Hold.account_id, Hold.amount, Hold.charged, Hold.membership_id)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        return None
    return _Closed(account_id=row.account_id, amount=row.amount, charged=row.charged, membership_id=row.membership_id)


async def _give_back(
    session: AsyncSession, closed: _Closed, *, hold_id: int, user_id: int | None, description: str | None = None
) -> int:
    """Return the hold to the balance and debit what it was charged: one UPDATE, one INSERT.

    Locks the member's allocation before the account, the order ``place_hold`` takes them in (else two
    requests of one org member deadlock: found by the chaos load run).
    """
    await _adjust_allocation(session, closed.membership_id, -(closed.amount - closed.charged))
    new_balance = await _move(session, account_id=closed.account_id, delta=closed.amount - closed.charged)
    assert new_balance is not None, "a credit never fails the funds check"
    common = {"account_id": closed.account_id, "hold_id": hold_id, "user_id": user_id}
    rows: list[dict[str, object]] = [
        {**common, "type": "release", "amount": closed.amount, "balance_after": new_balance + closed.charged}
    ]
    if closed.charged:
        rows.append(
            {
                **common,
                "type": "api_usage",
                "amount": -closed.charged,
                "balance_after": new_balance,
                "description": description,
            }
        )
    await _append(session, *rows)
    return new_balance


async def settle_hold(
    session: AsyncSession,
    *,
    hold_id: int,
    request_id: str,
    charge: Decimal,
    description: str | None = None,
    user_id: int | None = None,
) -> SettleResult:
    """Charge the actual cost of a held request and release the rest of the hold. A cost above the hold takes the
    difference from what the account (and the member's allocation) has left, never below zero; what even that
    cannot cover is the caller's to record (``usage_records.unrecovered``). ``HoldLost`` if the request has no hold.
    """
    wanted = to_hundredths(charge)
    if wanted < 0:
        raise InvalidRequest("a charge cannot be negative")
    closed = await _close(session, hold_id=hold_id, request_id=request_id, status="settled", charge=wanted)
    if closed is not None:
        if wanted > closed.amount:  # the upstream served more than was held: the rest from what is left
            extra, _ = await _spendable(session, account_id=closed.account_id, membership_id=closed.membership_id)
            extra = min(wanted - closed.amount, extra)
            if extra > 0:
                closed = replace(closed, charged=closed.charged + extra)
                await session.execute(update(Hold).where(Hold.id == hold_id).values(charged=closed.charged))
        balance = await _give_back(session, closed, hold_id=hold_id, user_id=user_id, description=description)
        released = from_hundredths(max(closed.amount - closed.charged, 0))
        metrics.credits(session, charged=from_hundredths(closed.charged), released=released)
        return SettleResult(
            from_hundredths(closed.charged),
            released,
            late=False,
            balance=from_hundredths(balance),
        )
    row = (
        await session.execute(
            select(Hold.id, Hold.account_id, Hold.amount, Hold.status, Hold.membership_id).where(
                Hold.request_id == request_id
            )
        )
    ).one_or_none()
    if row is None:
        raise HoldLost(f"hold {hold_id} of request {request_id} does not exist")
    if row.status != "expired":
        raise Conflict(f"hold {row.id} is already {row.status}")
    hold_id = row.id
    # The sweeper released this hold before the request finished: the full price, from what the balance allows.
    spendable, current = await _spendable(session, account_id=row.account_id, membership_id=row.membership_id)
    late_units = min(wanted, spendable)
    await session.execute(update(Hold).where(Hold.id == hold_id).values(charged=late_units))
    await _adjust_allocation(session, row.membership_id, late_units)
    if late_units:
        new_balance = await _move(session, account_id=row.account_id, delta=-late_units)
        assert new_balance is not None  # the row is locked and held at least this much
        await _append(
            session,
            {
                "account_id": row.account_id,
                "type": "api_usage",
                "amount": -late_units,
                "balance_after": new_balance,
                "hold_id": hold_id,
                "user_id": user_id,
                "description": (description or "") + " (settled after hold expiry)",
            },
        )
    left = current - late_units
    metrics.credits(session, charged=from_hundredths(late_units))
    return SettleResult(from_hundredths(late_units), Decimal("0.00"), late=True, balance=from_hundredths(left))


async def settle_lost_hold(
    session: AsyncSession,
    *,
    account_id: int,
    membership_id: int | None,
    request_id: str,
    charge: Decimal,
    description: str | None = None,
    user_id: int | None = None,
) -> SettleResult:
    """Charge a request whose hold the database lost (``HoldLost``) as a late settle is charged: the full price, from
    what the balance (and the member's allocation) has left, never below zero. The upstream has answered, so the
    answer is paid for; the crash took the hold's debit with the hold, so nothing is charged twice.

    It is booked as a hold of 0 placed, released and charged beyond itself (``charged > amount``, as a settle above
    its hold): the auditor's per-hold checks hold, and the hold's unique ``request_id`` makes a second attempt fail
    instead of charging again."""
    wanted = to_hundredths(charge)
    if wanted < 0:
        raise InvalidRequest("a charge cannot be negative")
    spendable, current = await _spendable(session, account_id=account_id, membership_id=membership_id)
    units = min(wanted, spendable)
    now = utcnow()
    hold_id: int = (
        await session.scalar(
            insert(Hold)
            .values(
                account_id=account_id,
                request_id=request_id,
                amount=0,
                status="settled",
                charged=units,
                created_at=now,
                expires_at=now,
                closed_at=now,
                membership_id=membership_id,
            )
            .returning(Hold.id)
        )
        or 0
    )
    await _adjust_allocation(session, membership_id, units)
    balance = current
    if units:
        moved = await _move(session, account_id=account_id, delta=-units)
        assert moved is not None  # the row is locked and has at least this much
        balance = moved
    common = {"account_id": account_id, "hold_id": hold_id, "user_id": user_id}
    rows: list[dict[str, object]] = [
        {**common, "type": "hold", "amount": 0, "balance_after": current},
        {**common, "type": "release", "amount": 0, "balance_after": current},
    ]
    if units:
        note = (description or "") + " (settled after the database lost the hold)"
        rows.append({**common, "type": "api_usage", "amount": -units, "balance_after": balance, "description": note})
    await _append(session, *rows)
    metrics.credits(session, charged=from_hundredths(units))
    return SettleResult(from_hundredths(units), Decimal("0.00"), late=True, balance=from_hundredths(balance))


async def _spendable(session: AsyncSession, *, account_id: int, membership_id: int | None) -> tuple[int, int]:
    """(what a charge beyond a hold may still take, the balance): the balance, and for a member also their
    allocation's room. Locks the rows in ``place_hold``'s order (allocation, then account)."""
    room: int | None = None
    if membership_id is not None:
        row = (
            await session.execute(
                select(Membership.allocation, Membership.used).where(Membership.id == membership_id).with_for_update()
            )
        ).one_or_none()
        room = 0 if row is None else row.allocation - row.used  # a seat gone since: nothing beyond the hold
    balance = await session.scalar(select(Account.balance).where(Account.id == account_id).with_for_update()) or 0
    return max(0, min(balance, balance if room is None else room)), balance


async def release_hold(
    session: AsyncSession, *, hold_id: int, request_id: str, status: str = "released", user_id: int | None = None
) -> bool:
    """Give a hold back in full (and the member's allocation); ``False`` if it was already closed (or lost)."""
    closed = await _close(session, hold_id=hold_id, request_id=request_id, status=status)
    if closed is None:
        return False
    await _give_back(session, closed, hold_id=hold_id, user_id=user_id)
    metrics.credits(session, released=from_hundredths(closed.amount))
    return True


async def expired_holds(session: AsyncSession, *, now: datetime, limit: int = 500) -> list[tuple[int, str]]:
    """``(id, request_id)`` of the open holds past their expiry, oldest first."""
    rows = await session.execute(
        select(Hold.id, Hold.request_id)
        .where(Hold.status == "open", Hold.expires_at < now)
        .order_by(Hold.id)
        .limit(limit)
    )
    return [(row.id, row.request_id) for row in rows]


async def held_amount(session: AsyncSession, account_id: int) -> Decimal:
    units = await session.scalar(
        select(func.coalesce(func.sum(Hold.amount), 0)).where(Hold.account_id == account_id, Hold.status == "open")
    )
    assert units is not None, "COALESCE(SUM(...), 0) is never NULL"
    return from_hundredths(units)


def signed_sum(type_: str, *, negate: bool = False) -> ColumnElement[int]:
    """SUM of the amounts of one entry type (for summaries)."""
    amount = -LedgerEntry.amount if negate else LedgerEntry.amount
    return func.coalesce(func.sum(case((LedgerEntry.type == type_, amount), else_=0)), 0)
