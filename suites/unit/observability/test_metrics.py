"""app/observability: every metric family moves when its event happens, and only then."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from creditgate.catalog.service import Catalog, ModelRoute, ProviderConfig
from creditgate.ledger import service as ledger
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.services.base import free_port
from creditgate_harness.wait import until

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chat_requests(status: str, model: str = "test-model", provider: str = "fake") -> float:
    labels = {"route": CHAT, "method": "POST", "status": status, "model": model, "provider": provider}
    return sample("creditgate_requests_total", **labels)


async def test_a_chat_counts_the_request_its_credits_and_the_upstream_call(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    before = {
        "requests": chat_requests("200"),
        "held": sample("creditgate_credits_held_total"),
        "charged": sample("creditgate_credits_charged_total"),
        "released": sample("creditgate_credits_released_total"),
        "upstream": sample("creditgate_upstream_requests_total", provider="fake", status="200"),
        "upstream_timed": sample("creditgate_upstream_duration_seconds_count", provider="fake"),
        "latency": sample("creditgate_request_duration_seconds_count", route=CHAT),
    }
    response = await async_client.post(CHAT, json={**BODY, "max_tokens": 5000}, headers=cg_funded_user.headers)
    assert response.status_code == 200
    charged = float(response.headers["X-Creditgate-Credits-Charged"])
    assert charged > 0
    held = sample("creditgate_credits_held_total") - before["held"]
    released = sample("creditgate_credits_released_total") - before["released"]
    assert sample("creditgate_credits_charged_total") - before["charged"] == pytest.approx(charged)
    assert held > charged
    assert held == pytest.approx(charged + released)  # every held credit is either charged or given back
    assert chat_requests("200") - before["requests"] == 1
    assert sample("creditgate_upstream_requests_total", provider="fake", status="200") - before["upstream"] == 1
    assert sample("creditgate_upstream_duration_seconds_count", provider="fake") - before["upstream_timed"] == 1
    assert sample("creditgate_request_duration_seconds_count", route=CHAT) - before["latency"] == 1


async def test_a_failed_call_releases_its_whole_hold(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.status_code(503))
    held, released = sample("creditgate_credits_held_total"), sample("creditgate_credits_released_total")
    failed = sample("creditgate_upstream_requests_total", provider="fake", status="503")
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert sample("creditgate_credits_released_total") - released == pytest.approx(
        sample("creditgate_credits_held_total") - held
    )
    assert sample("creditgate_upstream_requests_total", provider="fake", status="503") - failed == 1
    assert chat_requests("502") >= 1  # the last provider tried labels a failure


async def test_refusals_are_counted_by_reason(
    monkeypatch: pytest.MonkeyPatch, async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:

    broke = await cg_user_factory(credits=0)
    no_credits = sample("creditgate_refusals_total", status="402", reason="insufficient_credits")
    assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 402
    assert sample("creditgate_refusals_total", status="402", reason="insufficient_credits") - no_credits == 1
    assert chat_requests("402", provider="") >= 1  # refused before any provider: the model is still known


@pytest.fixture
def tiny_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    import creditgate.main

    monkeypatch.setattr(creditgate.main, "load_plans", lambda: {"trial": 1, "enterprise": None})


async def test_quota_refusals_are_429_quota_exceeded(
    tiny_plans: None, async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    before = sample("creditgate_refusals_total", status="429", reason="quota_exceeded")
    statuses = [(await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code for _ in "ab"]
    assert statuses == [200, 429]
    assert sample("creditgate_refusals_total", status="429", reason="quota_exceeded") - before == 1


async def test_metrics_endpoint_shows_open_holds_read_at_scrape_time(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime: Runtime
) -> None:
    async with cg_runtime.sessionmaker.begin() as session:
        await ledger.place_hold(
            session,
            account_id=cg_funded_user.account_id,
            amount=Decimal("12.34"),
            request_id="metrics-test",
            ttl=timedelta(minutes=5),
        )
    response = await async_client.get("/metrics")  # no API key
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["creditgate_open_holds"].samples[0].value == 1
    assert families["creditgate_open_holds_credits"].samples[0].value == pytest.approx(12.34)
    for name in ("creditgate_requests", "creditgate_credits_held", "creditgate_breaker_state"):
        assert name in families, name


async def test_a_rolled_back_hold_counts_nothing(cg_funded_user: TestUser, cg_runtime: Runtime) -> None:
    held = sample("creditgate_credits_held_total")

    async def hold_then_fail() -> None:
        async with cg_runtime.sessionmaker.begin() as session:
            await ledger.place_hold(
                session, account_id=cg_funded_user.account_id, amount=Decimal(7), request_id="r", ttl=timedelta(1)
            )
            raise RuntimeError("the caller fails after the hold")

    with pytest.raises(RuntimeError):
        await hold_then_fail()
    assert sample("creditgate_credits_held_total") == held
    async with cg_runtime.sessionmaker.begin() as session:
        await ledger.place_hold(
            session, account_id=cg_funded_user.account_id, amount=Decimal(7), request_id="r2", ttl=timedelta(1)
        )
    assert sample("creditgate_credits_held_total") - held == pytest.approx(7)  # a float counter


async def test_webhooks_and_notification_deliveries_are_counted(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
    notification_receiver: object,
) -> None:
    def webhooks(outcome: str) -> float:
        return sample(
            "creditgate_webhook_events_total", source="stripe", type="checkout.session.completed", outcome=outcome
        )

    credited, duplicate = webhooks("credited"), webhooks("duplicate")
    delivered = sample("creditgate_notification_deliveries_total", type="payment_received", outcome="delivered")
    checkout = await async_client.post("/billing/checkout", json={"amount_usd": "5"}, headers=cg_funded_user.headers)
    fake_stripe.complete(checkout.json()["id"])
    responses = await cg_stripe_webhooks.deliver_pending(times=2)
    assert [r.json()["outcome"] for r in responses] == ["credited", "duplicate"]
    assert (webhooks("credited") - credited, webhooks("duplicate") - duplicate) == (1, 1)

    def payment_notified() -> bool:
        now = sample("creditgate_notification_deliveries_total", type="payment_received", outcome="delivered")
        return now - delivered == 1

    await until(payment_notified, seconds=10)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_response_carries_a_request_id(async_client: httpx.AsyncClient, cg_funded_user: TestUser) -> None:
    health = await async_client.get("/health")
    missing = await async_client.get("/no/such/route")
    chat = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    ids = [r.headers["X-Request-Id"] for r in (health, missing, chat)]
    assert len(set(ids)) == 3
    assert all(len(i) == 32 for i in ids)
    assert sample("creditgate_requests_total", route="unmatched", method="GET", status="404", model="", provider="")


class TestDisabledOrElsewhere:
    @pytest.fixture
    def cg_settings(self, cg_settings: Settings) -> Settings:
        return cg_settings.model_copy(update={"metrics_enabled": False})

    async def test_disabled_metrics_are_not_served_or_recorded(
        self, async_client: httpx.AsyncClient, cg_funded_user: TestUser
    ) -> None:
        before = chat_requests("200")
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
        assert chat_requests("200") == before
        assert (await async_client.get("/metrics")).status_code == 404


class TestOwnPort:
    port = free_port()

    @pytest.fixture
    def cg_settings(self, cg_settings: Settings) -> Settings:
        return cg_settings.model_copy(update={"metrics_port": self.port})

    async def test_metrics_on_their_own_port(self, async_client: httpx.AsyncClient) -> None:
        assert (await async_client.get("/metrics")).status_code == 404
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.port}/metrics")
            other = await client.get(f"http://127.0.0.1:{self.port}/")
        assert response.status_code == 200
        assert "creditgate_open_holds 0.0" in response.text
        assert other.status_code == 404
        assert json.loads(json.dumps(response.headers["content-type"])).startswith("text/plain")


class TestBreakers:
    @pytest.fixture
    def cg_catalog(self) -> Catalog:
        base = catalog_for_tests()
        providers = (
            ProviderConfig(name="obs-primary", base_url="http://obs-primary.test/v1", api_key="k1"),
            ProviderConfig(name="obs-backup", base_url="http://obs-backup.test/v1", api_key="k2"),
        )
        routes = (ModelRoute(provider="obs-primary"), ModelRoute(provider="obs-backup"))
        return Catalog(
            providers=providers, models=tuple(m.model_copy(update={"providers": routes}) for m in base.models)
        )

    @pytest.fixture
    def cg_settings(self, cg_settings: Settings) -> Settings:
        return cg_settings.model_copy(update={"breaker_threshold": 2})

    async def test_breaker_state_and_upstream_labels_per_provider(
        self, async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
    ) -> None:
        assert sample("creditgate_breaker_state", provider="obs-primary") == 0  # every provider starts closed
        cg_upstream.push(Fault.status_code(500), Reply(), Fault.status_code(500), Reply())
        for _ in range(2):
            response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
            assert response.status_code == 200
        assert sample("creditgate_breaker_state", provider="obs-primary") == 2  # opened
        assert sample("creditgate_breaker_state", provider="obs-backup") == 0
        assert sample("creditgate_upstream_requests_total", provider="obs-primary", status="500") >= 2
        assert chat_requests("200", provider="obs-backup") >= 2
