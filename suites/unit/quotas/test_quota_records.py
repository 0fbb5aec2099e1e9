"""app/quotas/service.py piece by piece: the counters, the 429's words and headers, the 80 %/100 % notices, the plan
cache, failing open with a log, and what a subscription row records."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.cache import TTLCache
from creditgate.db.models import Subscription, utcnow
from creditgate.errors import InvalidRequest
from creditgate.quotas.service import (
    Admission,
    MemoryCounter,
    QuotaExceeded,
    Quotas,
    RedisCounter,
    period_end,
    set_plan,
)
from creditgate_harness.services import Service

SM = async_sessionmaker[AsyncSession]
PLANS: dict[str, int | None] = {"free": 2, "pro": None}


def quotas(counter: object | None = None) -> Quotas:
    cache: TTLCache[str] = TTLCache(60)
    cache.put("user:1", "free")
    return Quotas(counter=counter or MemoryCounter(), plans=PLANS, default_plan="free", plan_cache=cache)  # type: ignore[arg-type]


async def test_a_plan_is_counted_to_its_limit_then_refused_with_words_and_headers() -> None:
    q = quotas()
    first, second = await q.admit(None, "user:1"), await q.admit(None, "user:1")  # type: ignore[arg-type]
    assert first is not None
    assert second is not None
    assert (first.count, second.count, second.limit) == (1, 2, 2)
    assert first.key == f"quota:user:1:{utcnow():%Y%m}"
    with pytest.raises(QuotaExceeded) as refused:
        await q.admit(None, "user:1")  # type: ignore[arg-type]
    reset = int(period_end(utcnow()).timestamp())
    assert refused.value.message == (
        f"monthly quota of 2 calls on the 'free' plan is used up; it resets at "
        f"{datetime.fromtimestamp(reset, UTC).isoformat()}"
    )
    assert refused.value.extra == {"limit": 2, "remaining": 0, "reset": reset, "plan": "free"}
    assert refused.value.headers() == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(reset),
    }
    await q.give_back(second)
    again = await q.admit(None, "user:1")  # type: ignore[arg-type]
    assert again is not None
    assert again.count == 2


async def test_the_memory_counter_counts_exactly_and_never_below_zero() -> None:
    counter = MemoryCounter()
    await counter.give_back("k")  # nothing to give back: stays at 0
    assert await counter.take("k", limit=3, reset=0) == (1, True)
    assert await counter.take("k", limit=3, reset=0) == (2, True)
    await counter.give_back("k")
    assert await counter.take("k", limit=3, reset=0) == (2, True)
    assert await counter.take("k", limit=3, reset=0) == (3, True)
    assert await counter.take("k", limit=3, reset=0) == (3, False)
    assert await counter.take("other", limit=3, reset=0) == (1, True)


async def test_the_redis_counter_gives_calls_back(redis_service: Service, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_service.url)
    try:
        counter, key = RedisCounter(redis), f"{redis_prefix}quota:test"
        reset = int(period_end(utcnow()).timestamp())
        assert await counter.take(key, limit=2, reset=reset) == (1, True)
        assert await counter.take(key, limit=2, reset=reset) == (2, True)
        assert await counter.take(key, limit=2, reset=reset) == (2, False)
        await counter.give_back(key)
        assert int(await redis.get(key)) == 1
        assert await redis.expiretime(key) == reset
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("limit", "notices"),
    [
        (10, {8: "quota_80", 10: "quota_100"}),
        (20, {16: "quota_80", 20: "quota_100"}),
        (7, {6: "quota_80", 7: "quota_100"}),  # ceil(5.6) = 6
        (5, {4: "quota_80", 5: "quota_100"}),
        (3, {3: "quota_100"}),  # ceil(2.4) = 3 is the limit itself: one notice, the 100 % one
    ],
)
def test_notices_at_80_and_100_percent(limit: int, notices: dict[int, str]) -> None:
    crossed = {count: Admission("k", count, limit).crossed() for count in range(1, limit + 1)}
    assert {count: notice for count, notice in crossed.items() if notice} == notices


async def test_a_plan_is_read_once_then_cached(cg_sessionmaker: SM) -> None:
    q = Quotas(counter=MemoryCounter(), plans=PLANS, default_plan="free", plan_cache=TTLCache(60))
    async with cg_sessionmaker() as s, s.begin():
        await set_plan(s, subject="user:7", plan="pro", plans=PLANS)
    async with cg_sessionmaker() as s:
        assert await q.plan_of(s, "user:7") == "pro"
        assert await q.plan_of(s, "user:8") == "free"  # no subscription: the default plan
    assert await q.plan_of(None, "user:7") == "pro"  # type: ignore[arg-type]  # from the cache: no session needed


class Broken:
    async def take(self, key: str, *, limit: int, reset: int) -> tuple[int, bool]:
        raise ConnectionError("redis is down")

    async def give_back(self, key: str) -> None:
        raise ConnectionError("redis is down")


async def test_an_unreachable_counter_fails_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    q = quotas(Broken())
    with caplog.at_level(logging.WARNING, logger="creditgate.quotas.service"):
        assert await q.admit(None, "user:1") is None  # type: ignore[arg-type]
        await q.give_back(Admission("k", 1, 2))
    logged = [(r.getMessage(), bool(r.exc_info) and r.exc_info[0] is ConnectionError) for r in caplog.records]
    assert logged == [
        ("quota counter unavailable; allowing the call", True),
        ("could not give a quota call back", True),
    ]


async def test_a_subscription_records_its_plan_source_and_external_id(cg_sessionmaker: SM) -> None:
    async with cg_sessionmaker() as s, s.begin():
        await set_plan(s, subject="user:1", plan="pro", plans=PLANS)
        await set_plan(s, subject="org:2", plan="free", plans=PLANS, source="lago", external_id="sub_9")
    with pytest.raises(InvalidRequest) as unknown:
        async with cg_sessionmaker() as s, s.begin():
            await set_plan(s, subject="user:1", plan="gold", plans=PLANS)
    assert (unknown.value.message, unknown.value.extra) == ("unknown plan 'gold'; plans: free, pro", {"param": "plan"})
    async with cg_sessionmaker() as s:
        rows = {r.subject: (r.plan, r.source, r.external_id) for r in await s.scalars(select(Subscription))}
    assert rows == {"user:1": ("pro", "admin", None), "org:2": ("free", "lago", "sub_9")}
    async with cg_sessionmaker() as s, s.begin():
        await set_plan(s, subject="user:1", plan=None, plans=PLANS)
        await set_plan(s, subject="user:3", plan=None, plans=PLANS)  # nothing to remove: no error
    async with cg_sessionmaker() as s:
        assert [r.subject for r in await s.scalars(select(Subscription))] == ["org:2"]
