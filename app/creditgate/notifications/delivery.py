"""Deliver the outbox to ``notify_webhook_url``: signed, retried with backoff, at least once.

Each POST carries the notification as JSON and headers ``X-Creditgate-Notification-Id`` (stable across
retries: receivers dedupe on it) and ``X-Creditgate-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with notify_webhook_secret>``. A 2xx marks it delivered; anything else (or no answer)
schedules the next attempt after 2^attempts seconds (capped at an hour) until ``notify_max_attempts``.
Several workers may run this loop: each claims due rows with a lease (``FOR UPDATE SKIP LOCKED`` on
Postgres) in a short transaction, then sends outside any transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from creditgate.db.engine import is_sqlite
from creditgate.db.models import Notification, utcnow
from creditgate.observability import metrics
from creditgate.runtime import Runtime

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Creditgate-Signature"
ID_HEADER = "X-Creditgate-Notification-Id"
LEASE_MARGIN_SECONDS = 30


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2**attempts, 3600))


def body_of(n: Notification) -> bytes:
    return json.dumps(
        {
            "id": n.id,
            "type": n.type,
            "user_id": n.user_id,
            "created_at": n.created_at.isoformat(),
            "data": json.loads(n.payload),
        },
        sort_keys=True,
    ).encode()


async def _claim(rt: Runtime, limit: int) -> list[Notification]:
    """Take up to ``limit`` due notifications by pushing their next attempt past the send's timeout (a lease):
    other workers skip them, and if this one dies mid-send they fall due again. A short transaction."""
    settings = rt.settings
    async with rt.sessionmaker.begin() as session:
        query = (
            select(Notification)
            .where(
                Notification.delivered_at.is_(None),
                Notification.next_attempt_at <= utcnow(),
                Notification.attempts < settings.notify_max_attempts,
            )
            .order_by(Notification.created_at)
            .limit(limit)
        )
        if not is_sqlite(settings.database_url):
            query = query.with_for_update(skip_locked=True)
        claimed = list((await session.scalars(query)).all())
        if claimed:
            lease = utcnow() + timedelta(seconds=settings.notify_timeout_seconds + LEASE_MARGIN_SECONDS)
            ids = [n.id for n in claimed]
            await session.execute(update(Notification).where(Notification.id.in_(ids)).values(next_attempt_at=lease))
    return claimed


async def deliver_due(rt: Runtime, *, limit: int = 50) -> int:
    """One pass: send what is due (outside any transaction, so a slow receiver holds no lock); returns how many
    were delivered."""
    settings, http = rt.settings, rt.integrations
    assert settings.notify_webhook_url
    assert http is not None
    delivered = 0
    for n in await _claim(rt, limit):
        body = body_of(n)
        headers = {"Content-Type": "application/json", ID_HEADER: n.id}
        if settings.notify_webhook_secret:
            headers[SIGNATURE_HEADER] = sign(settings.notify_webhook_secret, body, int(time.time()))
        try:
            response = await http.post(
                settings.notify_webhook_url, content=body, headers=headers, timeout=settings.notify_timeout_seconds
            )
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        metrics.notification(n.type, "delivered" if error is None else "failed")
        values: dict[str, object] = {"attempts": n.attempts + 1}
        if error is None:
            values["delivered_at"] = utcnow()
            delivered += 1
        else:
            values |= {"last_error": error[:500], "next_attempt_at": utcnow() + backoff(n.attempts)}
        async with rt.sessionmaker.begin() as session:
            await session.execute(update(Notification).where(Notification.id == n.id).values(**values))
    return delivered


async def deliver_forever(rt: Runtime) -> None:
    while True:
        try:
            await deliver_due(rt)
        except Exception:  # the next pass tries again
            log.exception("notification delivery pass failed")
        await asyncio.sleep(rt.settings.notify_poll_seconds)
