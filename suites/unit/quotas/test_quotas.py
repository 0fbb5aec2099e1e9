"""app/quotas and the admin settings: 429 with reset headers, shared Redis counters, audited increments."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from asgi_lifespan import LifespanManager

from creditgate.main import create_app
from creditgate.quotas.service import load_plans, period_end
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.services import Service

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def test_plans_and_period() -> None:
    assert load_plans() == {"trial": 700, "professional": 10000, "platform": 100000, "enterprise": None}
    assert period_end(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end(datetime(2026, 2, 3, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


async def put_plan(client: httpx.AsyncClient, admin: TestUser, email: str, plan: str | None) -> httpx.Response:
    return await client.put("/admin/subscriptions", json={"email": email, "plan": plan}, headers=admin.headers)


@pytest.fixture
def tiny_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    import creditgate.main

    monkeypatch.setattr(creditgate.main, "load_plans", lambda: {"trial": 3, "professional": 5, "enterprise": None})


async def test_quota_429_with_headers_and_plan_changes(
    tiny_plans: None, async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_admin_user: TestUser
) -> None:
    for _ in range(3):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    refused = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) == int(period_end(datetime.now(UTC)).timestamp())
    assert refused.json()["error"]["type"] == "quota_exceeded"
    before = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    assert (await put_plan(async_client, cg_admin_user, cg_funded_user.email, "professional")).json()[
        "monthly_calls"
    ] == 5
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert (await put_plan(async_client, cg_admin_user, cg_funded_user.email, "enterprise")).status_code == 200
    for _ in range(5):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert (await put_plan(async_client, cg_admin_user, cg_funded_user.email, "gold")).status_code == 422
    assert before != (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]


async def test_byok_calls_count_and_credit_refusals_do_not(
    tiny_plans: None, async_client: httpx.AsyncClient, cg_user_factory
) -> None:  # type: ignore[no-untyped-def]
    broke = await cg_user_factory(credits=0)
    for _ in range(4):
        assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 402
    keys = {"provider": "fake", "api_key": "sk-own-key-0000"}
    await async_client.post("/user/provider-keys", json=keys, headers=broke.headers)
    for _ in range(3):
        assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 200
    assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 429


async def test_redis_counters_are_shared_between_workers(
    tiny_plans: None, cg_settings: Settings, redis_service: Service, cg_funded_user: TestUser
) -> None:
    shared = cg_settings.model_copy(update={"redis_url": redis_service.url})  # keys under this test's prefix
    fake = FakeProvider()
    apps = [
        create_app(shared, catalog=catalog_for_tests(), upstream_transport=httpx.ASGITransport(app=fake.app))
        for _ in range(2)
    ]
    async with LifespanManager(apps[0]) as a, LifespanManager(apps[1]) as b:
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://w") for m in (a, b)]
        statuses = [
            (await clients[i % 2].post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code for i in range(5)
        ]
        assert (await clients[0].get("/health")).json()["redis"] == "connected"
    assert statuses == [200, 200, 200, 429, 429]


async def test_quota_fails_open_when_redis_is_down(
    tiny_plans: None, cg_settings: Settings, cg_funded_user: TestUser
) -> None:
    down = cg_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    fake = FakeProvider()
    app = create_app(down, catalog=catalog_for_tests(), upstream_transport=httpx.ASGITransport(app=fake.app))
    async with (
        LifespanManager(app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://w") as c,
    ):
        for _ in range(5):
            assert (await c.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
        assert (await c.get("/health")).json()["redis"] == "error"


@pytest.mark.parametrize(
    ("cost_usd_per_1k_out", "increment", "expected"),
    [("0.00004", "0.1", "0.10"), ("0.00004", "0.01", "0.01"), ("0.00004", "1.0", "1.00"), ("0", "0.1", "0.00")],
)
async def test_increment_table_through_the_api(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_admin_user: TestUser,
    cg_upstream: FakeProvider,
    cg_runtime,
    cost_usd_per_1k_out: str,
    increment: str,
    expected: str,
) -> None:  # type: ignore[no-untyped-def]
    """$0.00004 of vendor cost × 1.5 = 0.006 credits → 0.1 / 0.01 / 1.0 by increment; zero cost → 0."""
    from creditgate.catalog.service import ModelConfig, ModelRoute

    tiny = ModelConfig(id="tiny", output_per_1k=Decimal(cost_usd_per_1k_out), providers=(ModelRoute(provider="fake"),))
    cg_runtime.catalog = cg_runtime.catalog.model_copy(update={"models": (*cg_runtime.catalog.models, tiny)})
    cg_runtime.providers.catalog = cg_runtime.catalog
    put = await async_client.put(
        "/admin/settings/credit-increment", json={"increment": increment}, headers=cg_admin_user.headers
    )
    assert put.status_code == 200
    cg_upstream.push(Reply(prompt_tokens=0, completion_tokens=1000))
    response = await async_client.post(
        CHAT, json={**BODY, "model": "tiny", "max_tokens": 1000}, headers=cg_funded_user.headers
    )
    assert response.headers["X-Creditgate-Credits-Charged"] == expected


async def test_increment_admin_rules_and_audit(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_admin_user: TestUser
) -> None:
    url = "/admin/settings/credit-increment"
    assert (await async_client.get(url, headers=cg_admin_user.headers)).json()["increment"] == "0.1"
    assert (await async_client.put(url, json={"increment": "0.01"}, headers=cg_funded_user.headers)).status_code == 403
    bad = await async_client.put(url, json={"increment": "0.05"}, headers=cg_admin_user.headers)
    assert bad.status_code == 422
    assert bad.json()["error"]["allowed"] == ["0.01", "0.1", "1.0"]
    await async_client.put(url, json={"increment": "0.01"}, headers=cg_admin_user.headers)
    await async_client.put(url, json={"increment": "1.0"}, headers=cg_admin_user.headers)
    trail = (await async_client.get("/admin/audit", headers=cg_admin_user.headers)).json()["data"]
    assert [(a["old_value"], a["new_value"], a["actor_user_id"]) for a in trail] == [
        ("0.01", "1.0", cg_admin_user.id),
        (None, "0.01", cg_admin_user.id),
    ]
    assert (await async_client.get("/admin/audit", headers=cg_funded_user.headers)).status_code == 403
