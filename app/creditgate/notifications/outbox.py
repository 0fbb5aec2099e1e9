"""Write notifications into the outbox, inside the caller's transaction (so they exist iff their cause does).

Types: ``low_balance`` (a charge took the balance below ``notify_low_balance``), ``payment_received``,
``refund``, ``quota_80`` and ``quota_100`` (the call that reached 80 % / 100 % of the plan's quota).
An org account's notifications go to the org's admins.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import Account, Membership, Notification, utcnow

TYPES = ("low_balance", "payment_received", "refund", "quota_80", "quota_100")


async def recipients(session: AsyncSession, account_id: int) -> list[int]:
    """Who hears about an account: its user, or an org's admins."""
    row = (await session.execute(select(Account.user_id, Account.org_id).where(Account.id == account_id))).one()
    if row.user_id is not None:
        return [row.user_id]
    admins = await session.scalars(
        select(Membership.user_id).where(Membership.org_id == row.org_id, Membership.role == "admin")
    )
    return list(admins)


async def notify(session: AsyncSession, *, user_ids: list[int], type: str, data: dict[str, Any]) -> None:
    """Queue one notification per user; ids are random UUIDs, stable across delivery attempts."""
    assert type in TYPES, type
    now = utcnow()
    rows = [
        {
            "id": str(uuid.uuid4()),
            "user_id": user_id,
            "type": type,
            "payload": json.dumps(data, default=str, sort_keys=True),
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
        }
        for user_id in user_ids
    ]
    if rows:
        await session.execute(insert(Notification), rows)


async def notify_account(session: AsyncSession, *, account_id: int, type: str, data: dict[str, Any]) -> None:
    await notify(session, user_ids=await recipients(session, account_id), type=type, data=data)


def crossed_below(threshold: Decimal, *, before: Decimal, after: Decimal) -> bool:
    return before >= threshold > after
