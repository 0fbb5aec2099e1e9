"""Operating the gateway: /metrics over two uvicorn workers after a short load, and JSON logs with no secret.

A live gateway (2 workers, Postgres, Redis, prometheus-client multiprocess mode), the fake LLM upstream and
fake Stripe on real ports and a notification receiver: chats (some refused for credits, some failing over an
opening circuit), a Stripe top-up delivered twice, a BYOK key. Then every metric family is non-zero, the
counters add up over both workers, and the workers' JSON logs hold none of the secrets they handled.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.ledger import service as ledger
from creditgate.testing.gateway import GatewayFactory, UserFactory, gateway_env, stripe_settings
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.providers import FakeProvider, Fault
from creditgate_harness.fakes.receiver import NotificationReceiver
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.wait import until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
FAMILIES = (
    "creditgate_requests",
    "creditgate_request_duration_seconds",
    "creditgate_upstream_requests",
    "creditgate_upstream_duration_seconds",
    "creditgate_credits_held",
    "creditgate_credits_charged",
    "creditgate_credits_released",
    "creditgate_open_holds",
    "creditgate_open_holds_credits",
    "creditgate_refusals",
    "creditgate_breaker_state",
    "creditgate_webhook_events",
    "creditgate_notification_deliveries",
)


def total(text: str, family: str, **labels: str) -> float:
    """Sum of a family's samples (counters: the ``_total``/``_count`` ones) whose labels include ``labels``."""
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            wanted = [s for s in metric.samples if not s.name.endswith(("_bucket", "_sum", "_created"))]
            return sum(s.value for s in wanted if labels.items() <= s.labels.items())
    return 0.0


async def test_metrics_over_two_workers_and_logs_without_secrets(
    tmp_path: Path,
    cg_live_server_factory: GatewayFactory,
    cg_user_factory: UserFactory,
    cg_upstream: FakeProvider,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    fake_stripe_server: StripeFake,
    notification_receiver: Fake[NotificationReceiver],
) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    fernet_key = Fernet.generate_key().decode()
    env = {
        **gateway_env(stripe_settings(fake_stripe_server)),
        **gateway_env(
            {
                "log_format": "json",
                "log_level": "debug",
                "breaker_threshold": 2,
                "byok_encryption_key": fernet_key,
                "notify_webhook_url": notification_receiver.url,
                "notify_webhook_secret": notification_receiver.state.secret,
                "notify_poll_seconds": 0.1,
            }
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    server = cg_live_server_factory(workers=2, env=env)
    users = [await cg_user_factory(credits=1000) for _ in range(4)]
    broke = await cg_user_factory(credits=0)
    byok_key = "sk-proj-operatorsBYOK0123456789abcdef"
    chats = 40
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        # A short load: 40 paid chats from 4 users at once, 3 refused for credits.
        results = await asyncio.gather(
            *(client.post(CHAT, json=BODY, headers=users[i % 4].headers) for i in range(chats)),
            *(client.post(CHAT, json=BODY, headers=broke.headers) for _ in range(3)),
        )
        assert [r.status_code for r in results] == [200] * chats + [402] * 3
        # The only provider fails twice: its circuit opens (in the worker that saw both failures, or both).
        cg_upstream.push(*[Fault.status_code(500)] * 6)
        for _ in range(6):
            assert (await client.post(CHAT, json=BODY, headers=users[0].headers)).status_code == 502
        # A top-up, its signed webhook delivered twice; a BYOK key; a wrong key.
        checkout = await client.post("/billing/checkout", json={"amount_usd": "10"}, headers=users[1].headers)
        fake_stripe_server.complete(checkout.json()["id"])

        async def deliver(payload: bytes, headers: dict[str, str]) -> httpx.Response:
            return await client.post("/billing/webhook", content=payload, headers=headers)

        hooks = StripeWebhooks(fake_stripe_server.state, deliver, secret=fake_stripe_server.webhook_secret)
        assert [r.json()["outcome"] for r in await hooks.deliver_pending(times=2)] == ["credited", "duplicate"]
        keys = {"provider": "fake", "api_key": byok_key}
        assert (await client.post("/user/provider-keys", json=keys, headers=users[2].headers)).status_code < 300
        wrong = {"Authorization": f"Bearer {users[3].key[:-4]}XXXX"}
        assert (await client.post(CHAT, json=BODY, headers=wrong)).status_code == 401
        await until(lambda: notification_receiver.state.unique, seconds=15, what="a notification delivered")
        async with cg_sessionmaker.begin() as session:  # a request in flight, as the scrape sees it
            await ledger.place_hold(
                session, account_id=users[3].account_id, amount=Decimal("2.50"), request_id="x", ttl=timedelta(1)
            )

        async def scrape() -> str:
            response = await client.get("/metrics")
            assert response.status_code == 200
            return response.text

        text = await scrape()
        for _ in range(50):  # the notification counter is written after the receiver answered
            if total(text, "creditgate_notification_deliveries", outcome="delivered"):
                break
            await asyncio.sleep(0.1)
            text = await scrape()
        (tmp_path / "metrics.txt").write_text(text)

    for family in FAMILIES:
        assert total(text, family) > 0, f"{family} is zero:\n{text}"
    # Both workers' samples are summed: every one of the 40 chats is counted once, whichever worker served it.
    ok = {"route": CHAT, "status": "200", "model": "test-model", "provider": "fake"}
    assert total(text, "creditgate_requests", **ok) == chats
    assert total(text, "creditgate_refusals", status="402", reason="insufficient_credits") == 3
    assert total(text, "creditgate_breaker_state", provider="fake") == 2
    assert total(text, "creditgate_open_holds") == 1
    assert total(text, "creditgate_open_holds_credits") == 2.5
    assert total(text, "creditgate_webhook_events", type="checkout.session.completed", outcome="duplicate") == 1
    # The workers' holds are all closed (the open one was placed by this test, not by a worker).
    charged, released = total(text, "creditgate_credits_charged"), total(text, "creditgate_credits_released")
    assert total(text, "creditgate_credits_held") == pytest.approx(charged + released)

    log = server.read_log()
    request_lines = [json.loads(line) for line in log.splitlines() if '"creditgate.request"' in line]
    assert len({entry["request_id"] for entry in request_lines}) == len(request_lines) >= chats
    secrets = [u.key for u in [*users, broke]]
    secrets += [byok_key, fernet_key, fake_stripe_server.api_key, fake_stripe_server.webhook_secret]
    secrets += [notification_receiver.state.secret]
    for secret in secrets:
        assert secret not in log
        assert secret[-12:] not in log
