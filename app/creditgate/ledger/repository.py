"""Read-side queries over the ledger (history pages and summaries)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import LedgerEntry
from creditgate.ledger.service import signed_sum
from creditgate.money import from_hundredths

ENTRY_TYPES = ("purchase", "bonus", "adjustment", "refund", "hold", "release", "api_usage")


@dataclass(frozen=True, slots=True)
class Summary:
    total_spent: Decimal
    total_purchased: Decimal
    total_bonus: Decimal
    total_refunded: Decimal
    net_balance: Decimal


def as_utc(moment: datetime | None) -> datetime | None:
    """A query bound in UTC (a naive datetime is taken as UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _filters(
    account_id: int, *, start: datetime | None, end: datetime | None, type_: str | None = None
) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [LedgerEntry.account_id == account_id]
    if (s := as_utc(start)) is not None:
        clauses.append(LedgerEntry.created_at >= s)
    if (e := as_utc(end)) is not None:
        clauses.append(LedgerEntry.created_at < e)
    if type_ is not None:
        clauses.append(LedgerEntry.type == type_)
    return clauses


async def page(
    session: AsyncSession,
    account_id: int,
    *,
    limit: int,
    offset: int,
    type_: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[Sequence[LedgerEntry], int]:
    """Entries newest first (ties broken by id, so pages never overlap) and the total count."""
    where = _filters(account_id, start=start, end=end, type_=type_)
    query = (
        select(LedgerEntry)
        .where(*where)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.scalars(query)).all()
    total = await session.scalar(select(func.count()).select_from(LedgerEntry).where(*where))
    return rows, int(total or 0)


async def summary(
    session: AsyncSession, account_id: int, *, start: datetime | None = None, end: datetime | None = None
) -> Summary:
    """Totals for a period; ``net_balance`` is the sum of the period's entries (the balance, over all time)."""
    row = (
        await session.execute(
            select(
                signed_sum("api_usage", negate=True),
                signed_sum("purchase"),
                signed_sum("bonus"),
                signed_sum("refund", negate=True),
                func.coalesce(func.sum(LedgerEntry.amount), 0),
            ).where(*_filters(account_id, start=start, end=end))
        )
    ).one()
    spent, purchased, bonus, refunded, net = (from_hundredths(int(v)) for v in row)
    return Summary(spent, purchased, bonus, refunded, net)
