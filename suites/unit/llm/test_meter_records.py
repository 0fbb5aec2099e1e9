"""What a metered request leaves behind, field by field, on both ledger paths: the notices a user reads (quota,
low balance) and whose provider key a cached BYOK lookup hands out."""

from __future__ import annotations

import logging
from decimal import Decimal

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth.service import authenticate_cached
from creditgate.db.models import Hold, UsageRecord
from creditgate.llm.metering import Meter
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
EITHER_PATH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


async def _notices(client: httpx.AsyncClient, user: TestUser) -> list[tuple[str, dict[str, object]]]:
    listed = (await client.get("/user/notifications", headers=user.headers)).json()["data"]
    return sorted((n["type"], n["data"]) for n in listed)


@EITHER_PATH
async def test_quota_notices_name_the_subject_the_calls_and_the_limit(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["tiny"], quotas.default_plan = 5, "tiny"
    user = await cg_user_factory(credits=1000)
    for _ in range(5):
        assert (await async_client.post(CHAT, json=BODY, headers=user.headers)).status_code == 200
    subject = f"user:{user.id}"
    assert await _notices(async_client, user) == [
        ("quota_100", {"subject": subject, "calls": 5, "limit": 5}),
        ("quota_80", {"subject": subject, "calls": 4, "limit": 5}),
    ]


@EITHER_PATH
async def test_the_low_balance_notice_carries_the_balance_after_the_charge(
    cg_settings: Settings, async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_settings.notify_low_balance = Decimal("999.99")
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    charged = Decimal(response.headers["X-Creditgate-Credits-Charged"])
    assert charged > Decimal("0.01")
    after = str(Decimal("1000.00") - charged)
    assert await _notices(async_client, cg_funded_user) == [("low_balance", {"balance": after, "threshold": "999.99"})]


@EITHER_PATH
async def test_a_cached_byok_key_is_only_ever_its_owners(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    owner, other = await cg_user_factory(credits=1000), await cg_user_factory(credits=1000)
    await async_client.post(
        "/user/provider-keys", json={"provider": "fake", "api_key": "sk-owner-own-key-1234"}, headers=owner.headers
    )
    for user in (owner, other, owner, other):  # each lookup after the first comes from the worker's cache
        cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=400))
        response = await async_client.post(CHAT, json=BODY, headers=user.headers)
        assert response.status_code == 200, response.text
        sent = cg_upstream.calls[-1].headers["authorization"]
        assert (sent == "Bearer sk-owner-own-key-1234") is (user is owner)
        assert (response.headers["X-Creditgate-Credits-Charged"] == "0.00") is (user is owner)


def _counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


CREDITS = ("held", "charged", "released")


@EITHER_PATH
async def test_the_credit_counters_add_up_to_the_hold(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    before = {c: _counter(f"creditgate_credits_{c}_total") for c in CREDITS}
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=10))
    response = await async_client.post(CHAT, json=BODY | {"max_tokens": 4000}, headers=cg_funded_user.headers)
    moved = {c: round(_counter(f"creditgate_credits_{c}_total") - before[c], 2) for c in CREDITS}
    charged = float(response.headers["X-Creditgate-Credits-Charged"])
    assert moved["charged"] == charged > 0
    assert moved["released"] > 0  # 10 of the 4,000 held completion tokens were used
    assert moved["held"] == round(moved["charged"] + moved["released"], 2)


@EITHER_PATH
async def test_the_worker_caches_byok_keys_and_the_increment_between_requests(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from creditgate.catalog import pricing
    from creditgate.llm import metering

    calls: list[str] = []

    def counted(name: str, real):  # type: ignore[no-untyped-def]
        async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return await real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(metering, "keys_for", counted("byok", metering.keys_for))
    monkeypatch.setattr(pricing, "current_increment", counted("increment", pricing.current_increment))
    first, second = await cg_user_factory(credits=1000), await cg_user_factory(credits=1000)
    for user in (first, first, second, second, first):
        assert (await async_client.post(CHAT, json=BODY, headers=user.headers)).status_code == 200
    assert sorted(calls) == ["byok", "byok", "increment"]  # once per user, once per worker


@EITHER_PATH
async def test_each_subject_has_its_own_quota_and_a_refusal_for_credits_does_not_count(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_admin_user: TestUser
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["tiny"], quotas.default_plan = 2, "tiny"
    first, broke = await cg_user_factory(credits=1000), await cg_user_factory(credits=0)
    assert [(await async_client.post(CHAT, json=BODY, headers=first.headers)).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    assert [(await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code for _ in range(3)] == [
        402
    ] * 3
    grant = {"email": broke.email, "amount": "10", "idempotency_key": f"grant-{broke.id}"}
    assert (await async_client.post("/admin/credits", json=grant, headers=cg_admin_user.headers)).status_code == 200
    assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 200


async def test_an_image_request_short_of_credits_says_so_without_a_token_count(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    broke = await cg_user_factory(credits=1)
    response = await async_client.post("/v1/images/generations", json={"prompt": "a cat"}, headers=broke.headers)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["reason"] == "insufficient_credits"
    assert "max_affordable_tokens" not in error


@EITHER_PATH
async def test_a_cancelled_settle_still_commits(
    cg_funded_user: TestUser, cg_runtime: Runtime, cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    meter = await _meter(cg_runtime, cg_funded_user)

    async def settle() -> None:
        await meter.settle(charge=meter.held, provider="fake", prompt_tokens=1, completion_tokens=1, latency_ms=1)

    async with anyio.create_task_group() as requests:  # how the server cancels a request whose client went away
        requests.start_soon(settle)
        await anyio.lowlevel.checkpoint()
        requests.cancel_scope.cancel()
    async with cg_sessionmaker() as s:
        hold = await s.get(Hold, meter.hold_id)
        assert hold is not None
        assert (hold.status, hold.charged) == ("settled", hold.amount)
        assert hold.amount > 0


@EITHER_PATH
async def test_a_release_happens_once_and_on_postgres_in_one_call(
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from creditgate.ledger import service as ledger

    meter = await _meter(cg_runtime, cg_funded_user)
    if not database_url.startswith("sqlite"):

        async def not_here(*args: object, **kwargs: object) -> bool:
            raise AssertionError("the ORM path released a hold the fast path should have")

        monkeypatch.setattr(ledger, "release_hold", not_here)
    released_before = _counter("creditgate_credits_released_total")
    await meter.release()
    await meter.release()  # a no-op: nothing logged, nothing recorded twice
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    async with cg_sessionmaker() as s:
        hold = await s.get(Hold, meter.hold_id)
        assert hold is not None
        assert hold.status == "released"
        usage = (await s.execute(select(UsageRecord.outcome, UsageRecord.credits))).all()
    assert [tuple(u) for u in usage] == [("failed", 0)]
    assert round(_counter("creditgate_credits_released_total") - released_before, 2) == float(meter.held) > 0


async def _meter(rt: Runtime, user: TestUser) -> Meter:
    principal = await authenticate_cached(rt.caches, rt.sessionmaker, user.key)
    assert principal is not None
    return await Meter.open(rt, principal, rt.catalog.model("test-model"), prompt_estimate=10, max_tokens=100)


@EITHER_PATH
async def test_an_unlimited_plan_is_served_and_counted_nowhere(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["unlimited"], quotas.default_plan = None, "unlimited"
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    assert "X-RateLimit-Limit" not in response.headers


@EITHER_PATH
async def test_a_settle_whose_hold_was_lost_is_charged_and_leaves_the_hold_with_its_id(
    cg_funded_user: TestUser, cg_runtime: Runtime, cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """After a crash lost request L's hold, request O's new hold may carry L's id. L's settle (fast path on Postgres,
    then the ORM path) charges L's price from the balance; O's hold stays open; a retry sees the charge."""
    import dataclasses
    import uuid

    from creditgate.ledger import service as ledger

    owner = await _meter(cg_runtime, cg_funded_user)
    lost = dataclasses.replace(owner, request_id=uuid.uuid4().hex)  # same hold id, another request
    price = Decimal("0.30")
    charged = await lost.settle(charge=price, provider="fake", prompt_tokens=10, completion_tokens=5, latency_ms=1)
    assert charged == price
    assert await lost._committed_charge() == price  # an ambiguous retry returns this charge, not a second one
    async with cg_sessionmaker() as s:
        hold = await s.get_one(Hold, owner.hold_id)
        assert (hold.request_id, hold.status, hold.charged) == (owner.request_id, "open", 0)
        usage = (await s.execute(select(UsageRecord.request_id, UsageRecord.credits))).all()
        assert await ledger.balance_of(s, cg_funded_user.account_id) == 1000 - owner.held - price
    assert [tuple(u) for u in usage] == [(lost.request_id, 30)]
    await owner.release()
