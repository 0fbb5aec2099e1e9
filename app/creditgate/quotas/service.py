"""Monthly call quotas per user or org (by plan), enforced on every paid and BYOK request.

Counters live in Redis when ``CREDITGATE_REDIS_URL`` is set — one atomic script per call, the key
expiring at the end of the month — so several workers share one count. Without Redis an
in-process counter does the job for a single process. If Redis is down the gateway **fails open**
(the call is allowed and logged; credits are still enforced by the ledger) and ``/health`` reports
redis ``error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.cache import TTLCache, changed
from creditgate.db.models import Subscription, utcnow
from creditgate.errors import GatewayError, InvalidRequest

log = logging.getLogger(__name__)
PLANS_FILE = Path(__file__).with_name("plans.json")


class QuotaExceeded(GatewayError):
    status_code = 429
    error_type = "quota_exceeded"

    def __init__(self, message: str, *, limit: int, reset: int, plan: str) -> None:
        super().__init__(message, limit=limit, remaining=0, reset=reset, plan=plan)
        self.limit, self.reset = limit, reset

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(self.reset),
        }


def load_plans(path: Path = PLANS_FILE) -> dict[str, int | None]:
    """Plan name → monthly calls (``None`` = unlimited)."""
    return {name: spec["monthly_calls"] for name, spec in json.loads(path.read_text()).items()}


def period_end(now: datetime) -> datetime:
    """The first instant of next month, UTC: when this month's counters reset."""
    return datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)


class Counter(Protocol):
    async def take(self, key: str, *, limit: int, reset: int) -> tuple[int, bool]: ...
    async def give_back(self, key: str) -> None: ...


# Atomically: refuse if the count already reached the limit, else count this call (expiring at reset).
_TAKE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then return {current, 0} end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return {current, 1}
"""


class RedisCounter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    async def take(self, key: str, *, limit: int, reset: int) -> tuple[int, bool]:
        count, allowed = await self._take(keys=[key], args=[limit, reset])
        return int(count), bool(allowed)

    async def give_back(self, key: str) -> None:
        await self.redis.decr(key)


class MemoryCounter:
    """One process's counter (the embedded default)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def take(self, key: str, *, limit: int, reset: int) -> tuple[int, bool]:
        async with self._lock:
            current = self._counts.get(key, 0)
            if current >= limit:
                return current, False
            self._counts[key] = current + 1
            return current + 1, True

    async def give_back(self, key: str) -> None:
        async with self._lock:
            self._counts[key] = max(self._counts.get(key, 1) - 1, 0)


@dataclass(frozen=True, slots=True)
class Admission:
    """A counted call: the counter's key (to give the call back), the count it reached, the plan's limit."""

    key: str
    count: int
    limit: int

    def crossed(self) -> str | None:
        """``quota_80`` / ``quota_100`` on the call that reaches 80 % / 100 % of the limit, else ``None``."""
        if self.count == self.limit:
            return "quota_100"
        if self.count == -(-self.limit * 8 // 10):  # ceil(0.8 × limit)
            return "quota_80"
        return None


@dataclass
class Quotas:
    counter: Counter
    plans: dict[str, int | None]
    default_plan: str
    key_prefix: str = ""
    plan_cache: TTLCache[str] = field(default_factory=lambda: TTLCache(0))

    async def plan_of(self, session: AsyncSession | Callable[[], AsyncSession], subject: str) -> str:
        """``subject``'s plan; ``session`` (or the callable that gives one) is used only on a cache miss."""
        if (cached := self.plan_cache.get(subject)) is not None:
            return cached
        db = session() if callable(session) else session
        plan = await db.scalar(select(Subscription.plan).where(Subscription.subject == subject))
        return self.plan_cache.put(subject, plan if plan in self.plans else self.default_plan)

    async def admit(self, session: AsyncSession | Callable[[], AsyncSession], subject: str) -> Admission | None:
        """Count one call for ``subject``; ``QuotaExceeded`` (429) past its plan. ``None`` when not counted
        (an unlimited plan, or the counter unreachable)."""
        plan = await self.plan_of(session, subject)
        limit = self.plans.get(plan)
        if limit is None:
            return None
        now = utcnow()
        reset = int(period_end(now).timestamp())
        key = f"{self.key_prefix}quota:{subject}:{now:%Y%m}"
        try:
            count, allowed = await self.counter.take(key, limit=limit, reset=reset)
        except Exception:  # Redis unreachable: fail open, the ledger still guards the money
            log.warning("quota counter unavailable; allowing the call", exc_info=True)
            return None
        if not allowed:
            raise QuotaExceeded(
                f"monthly quota of {limit} calls on the {plan!r} plan is used up; it resets at "
                f"{datetime.fromtimestamp(reset, UTC).isoformat()}",
                limit=limit,
                reset=reset,
                plan=plan,
            )
        return Admission(key, count, limit)

    async def give_back(self, admission: Admission | None) -> None:
        if admission is not None:
            try:
                await self.counter.give_back(admission.key)
            except Exception:
                log.warning("could not give a quota call back", exc_info=True)


async def set_plan(
    session: AsyncSession,
    *,
    subject: str,
    plan: str | None,
    plans: dict[str, int | None],
    source: str = "admin",
    external_id: str | None = None,
) -> None:
    """Put ``subject`` on ``plan`` (``None`` removes the subscription: back to the default plan)."""
    row = await session.scalar(select(Subscription).where(Subscription.subject == subject))
    await changed(session, "plan", subject)
    if plan is None:
        if row is not None:
            await session.delete(row)
        return
    if plan not in plans:
        raise InvalidRequest(f"unknown plan {plan!r}; plans: {', '.join(plans)}", param="plan")
    if row is None:
        session.add(Subscription(subject=subject, plan=plan, source=source, external_id=external_id))
    else:
        row.plan, row.source, row.external_id, row.updated_at = plan, source, external_id, utcnow()
    await session.flush()
