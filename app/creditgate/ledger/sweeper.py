"""Release holds whose request never settled (a crashed worker, a lost task) once they expire."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import utcnow
from creditgate.ledger import service as ledger

log = logging.getLogger(__name__)


async def sweep_once(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Release every expired open hold, each in its own transaction; returns how many were released."""
    async with sessionmaker() as session:
        expired = await ledger.expired_holds(session, now=utcnow())
    released = 0
    for hold_id, request_id in expired:
        async with sessionmaker() as session, session.begin():
            released += await ledger.release_hold(session, hold_id=hold_id, request_id=request_id, status="expired")
    if released:
        log.warning("released %d expired holds", released)
    return released


async def run_forever(sessionmaker: async_sessionmaker[AsyncSession], *, interval: float) -> None:
    """A sweep every ``interval`` seconds. The first is the caller's, before it serves (``main``'s lifespan): a
    sweep racing the first requests made tests order-dependent (it released a hold a test had just planted)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(sessionmaker)
        except Exception:  # keep sweeping; the next round retries
            log.exception("hold sweep failed")
