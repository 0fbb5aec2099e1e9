"""Notifications: written with their cause, listed, delivered signed, retried, at least once under stable ids."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
from fastapi import FastAPI

from creditgate.notifications.delivery import backoff, sign
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.receiver import NotificationReceiver, signature_ok
from creditgate_harness.wait import until

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


async def test_low_balance_is_notified_once_and_delivered_signed_after_retries(
    cg_settings,
    cg_app: FastAPI,
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    notification_receiver: Fake[NotificationReceiver],
) -> None:  # type: ignore[no-untyped-def]
    receiver, _ = notification_receiver.state, notification_receiver.url
    receiver.fail_next = 1  # the first delivery fails: it is retried after the backoff
    cg_settings.notify_low_balance = Decimal("999.99")
    for _ in range(2):  # only the request that crosses the threshold notifies
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    listed = (await async_client.get("/user/notifications", headers=cg_funded_user.headers)).json()["data"]
    assert [n["type"] for n in listed] == ["low_balance"]
    assert listed[0]["data"]["threshold"] == "999.99"
    await until(lambda: len(receiver.received) == 1)
    delivered = receiver.received[0]
    assert (delivered["id"], delivered["type"], delivered["user_id"]) == (
        listed[0]["id"],
        "low_balance",
        cg_funded_user.id,
    )
    assert receiver.rejected_signatures == 0
    again = (await async_client.get("/user/notifications", headers=cg_funded_user.headers)).json()["data"][0]
    assert (again["delivered"], again["attempts"]) == (True, 2)


async def test_quota_80_and_100_percent(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["tiny"], quotas.default_plan = 5, "tiny"
    user = await cg_user_factory(credits=1000)
    statuses = [(await async_client.post(CHAT, json=BODY, headers=user.headers)).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    listed = (await async_client.get("/user/notifications", headers=user.headers)).json()["data"]
    assert sorted((n["type"], n["data"]["calls"]) for n in listed) == [("quota_100", 5), ("quota_80", 4)]


async def test_a_refused_request_leaves_no_notification(
    cg_app: FastAPI, async_client: httpx.AsyncClient, cg_user_factory: UserFactory
) -> None:
    quotas = cg_app.state.runtime.quotas
    quotas.plans["tiny"], quotas.default_plan = 1, "tiny"
    broke = await cg_user_factory(credits=0)
    assert (await async_client.post(CHAT, json=BODY, headers=broke.headers)).status_code == 402
    assert (await async_client.get("/user/notifications", headers=broke.headers)).json()["data"] == []


def test_signature_and_backoff() -> None:
    header = sign("secret", b'{"a":1}', 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert signature_ok("secret", b'{"a":1}', header)
    assert not signature_ok("secret", b'{"a":2}', header)
    assert not signature_ok("other", b'{"a":1}', header)
    assert not signature_ok("secret", b'{"a":1}', None)
    assert [backoff(n).total_seconds() for n in (0, 1, 5, 20)] == [1, 2, 32, 3600]


async def test_a_slow_receiver_gets_it_twice_under_one_id(
    cg_settings,
    cg_app: FastAPI,
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    notification_receiver: Fake[NotificationReceiver],
) -> None:  # type: ignore[no-untyped-def]
    """At least once: the receiver processed it but answered after the gateway gave up, so it comes again."""
    receiver, _ = notification_receiver.state, notification_receiver.url
    receiver.delay = 0.5
    cg_settings.notify_timeout_seconds = 0.1
    cg_settings.notify_low_balance = Decimal("999.99")
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    await until(lambda: len(receiver.received) == 1)
    receiver.delay = 0.0
    await until(lambda: len(receiver.received) == 2)
    assert len(receiver.unique) == 1  # one notification, delivered twice, deduped by its id
    for _ in range(100):
        listed = (await async_client.get("/user/notifications", headers=cg_funded_user.headers)).json()["data"][0]
        if listed["delivered"]:
            break
        await asyncio.sleep(0.05)
    assert (listed["delivered"], listed["attempts"]) == (True, 2)  # the timed-out attempt counted, then success
