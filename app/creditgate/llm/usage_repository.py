"""Read-side queries over usage records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import UsageRecord
from creditgate.ledger.repository import as_utc


async def page(
    session: AsyncSession,
    *,
    user_id: int,
    limit: int,
    offset: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[Sequence[UsageRecord], int]:
    where: list[ColumnElement[bool]] = [UsageRecord.user_id == user_id]
    if start is not None:
        where.append(UsageRecord.created_at >= as_utc(start))
    if end is not None:
        where.append(UsageRecord.created_at < as_utc(end))
    rows = (
        await session.scalars(
            select(UsageRecord)
            .where(*where)
            .order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    total = await session.scalar(select(func.count()).select_from(UsageRecord).where(*where))
    return rows, int(total or 0)
