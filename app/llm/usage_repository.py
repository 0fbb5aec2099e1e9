"""Read-side queries over usage records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import UsageRecord


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


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
        where.append(UsageRecord.created_at >= _utc(start))
    if end is not None:
        where.append(UsageRecord.created_at < _utc(end))
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
