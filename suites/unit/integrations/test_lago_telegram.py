"""Lago subscription webhooks and Telegram Mini App sign-in, against the harness's signers."""

from __future__ import annotations

import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.signers import LAGO_HMAC_KEY, TELEGRAM_BOT_TOKEN, lago_webhook, telegram_init_data

LAGO = "/integrations/lago/webhook"
TELEGRAM = "/auth/telegram/exchange"


def sub(user: TestUser, plan: str = "professional", status: str = "active") -> dict[str, object]:
    return {"external_customer_id": user.email, "plan_code": plan, "status": status, "external_id": "sub_1"}


async def test_lago_started_updated_terminated_change_the_plan(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_settings
) -> None:  # type: ignore[no-untyped-def]
    from creditgate.db.models import Subscription

    results = []
    for kind, body in (
        ("subscription.started", sub(cg_funded_user, "professional")),
        ("subscription.updated", sub(cg_funded_user, "platform")),
    ):
        raw, headers = lago_webhook(kind, body, hmac_key=LAGO_HMAC_KEY)
        results.append((await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"])
    assert results == ["plan professional", "plan platform"]
    from creditgate.db.engine import create_engine, create_sessionmaker

    engine = create_engine(cg_settings.database_url)
    async with create_sessionmaker(engine)() as s:
        from sqlalchemy import select

        row = await s.scalar(select(Subscription).where(Subscription.subject == f"user:{cg_funded_user.id}"))
        assert row is not None
        assert (row.plan, row.source) == ("platform", "lago")
    raw, headers = lago_webhook(
        "subscription.terminated", sub(cg_funded_user, status="terminated"), hmac_key=LAGO_HMAC_KEY
    )
    assert (await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"] == "subscription ended"
    await engine.dispose()


async def test_lago_duplicate_unknown_type_and_unknowns(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), hmac_key=LAGO_HMAC_KEY, unique_key="k1")
    outcomes = [(await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"] for _ in range(2)]
    assert outcomes == ["plan professional", "duplicate"]
    raw, headers = lago_webhook("invoice.created", {}, hmac_key=LAGO_HMAC_KEY)
    assert (await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"] == "ignored"
    raw, headers = lago_webhook("subscription.started", sub(cg_funded_user, "gold"), hmac_key=LAGO_HMAC_KEY)
    assert (await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"] == "unknown plan 'gold'"
    stranger = {"external_customer_id": "nobody@example.test", "plan_code": "trial"}
    raw, headers = lago_webhook("subscription.started", stranger, hmac_key=LAGO_HMAC_KEY)
    assert (await async_client.post(LAGO, content=raw, headers=headers)).json()["outcome"] == "unknown customer"


@pytest.mark.parametrize(
    "case", ["tampered_body", "wrong_key", "missing_signature", "unknown_algorithm", "jwt_unconfigured"]
)
async def test_lago_bad_signatures_are_400_and_change_nothing(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, case: str
) -> None:
    raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), hmac_key=LAGO_HMAC_KEY)
    if case == "tampered_body":
        raw = raw.replace(b"professional", b"enterprise")
    elif case == "wrong_key":
        raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), hmac_key="another-key")
    elif case == "missing_signature":
        headers.pop("X-Lago-Signature")
    elif case == "unknown_algorithm":
        headers["X-Lago-Signature-Algorithm"] = "md5"
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), private_key=key)
    response = await async_client.post(LAGO, content=raw, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_signature"


@pytest.fixture
def lago_rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem.decode()


async def test_lago_jwt_signature(cg_settings, cg_app, cg_funded_user: TestUser, lago_rsa) -> None:  # type: ignore[no-untyped-def]
    from asgi_lifespan import LifespanManager

    key, pem = lago_rsa
    cg_settings.lago_public_key = pem
    async with (
        LifespanManager(cg_app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://t") as client,
    ):
        raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), private_key=key)
        assert (await client.post(LAGO, content=raw, headers=headers)).json()["outcome"] == "plan professional"
        other, _ = lago_webhook("subscription.started", sub(cg_funded_user, "platform"), private_key=key)
        assert (await client.post(LAGO, content=other, headers=headers)).status_code == 400  # JWT for another body
        forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        raw, headers = lago_webhook("subscription.started", sub(cg_funded_user), private_key=forged)
        assert (await client.post(LAGO, content=raw, headers=headers)).status_code == 400


TG_USER = {"id": 4242, "first_name": "Tess", "username": "tess"}


async def test_telegram_exchange_gives_a_working_short_lived_key(async_client: httpx.AsyncClient) -> None:
    response = await async_client.post(TELEGRAM, json={"init_data": telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == 3600
    headers = {"Authorization": f"Bearer {body['api_key']}"}
    assert (await async_client.get("/user/balance", headers=headers)).status_code == 200
    second = await async_client.post(TELEGRAM, json={"init_data": telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER)})
    assert second.json()["user_id"] == body["user_id"]  # linked by Telegram id, not created again


async def test_telegram_key_expires(async_client: httpx.AsyncClient, cg_settings) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from creditgate.db.engine import create_engine, create_sessionmaker
    from creditgate.db.models import ApiKey, utcnow

    key = (
        await async_client.post(TELEGRAM, json={"init_data": telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER)})
    ).json()
    engine = create_engine(cg_settings.database_url)
    async with create_sessionmaker(engine).begin() as s:
        await s.execute(update(ApiKey).where(ApiKey.user_id == key["user_id"]).values(expires_at=utcnow()))
    await engine.dispose()
    response = await async_client.get("/user/balance", headers={"Authorization": f"Bearer {key['api_key']}"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "does not verify"),
        ("other_bot", "does not verify"),
        ("stale", "stale"),
        ("future", "in the future"),
        ("no_hash", "does not verify"),
        ("not_a_query", "not a query string"),
        ("replayed", "already used"),
    ],
)
async def test_telegram_bad_init_data_is_401(async_client: httpx.AsyncClient, case: str, reason: str) -> None:
    good = telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER)
    data = {
        "tampered": good.replace("4242", "4243"),
        "other_bot": telegram_init_data("999:another-bot", TG_USER),
        "stale": telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER, auth_date=int(time.time()) - 7200),
        "future": telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER, auth_date=int(time.time()) + 3600),
        "no_hash": good.split("&hash=")[0],
        "not_a_query": "just some text",
        "replayed": good,
    }[case]
    if case == "replayed":
        assert (await async_client.post(TELEGRAM, json={"init_data": data})).status_code == 200
    response = await async_client.post(TELEGRAM, json={"init_data": data})
    assert response.status_code == 401, response.text
    assert reason in response.json()["error"]["message"]


async def test_unconfigured_integrations_answer_503(cg_settings, cg_app) -> None:  # type: ignore[no-untyped-def]
    from asgi_lifespan import LifespanManager

    cg_settings.lago_hmac_key, cg_settings.telegram_bot_token = None, None
    async with (
        LifespanManager(cg_app) as m,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=m.app), base_url="http://t") as client,
    ):
        raw, headers = lago_webhook("subscription.started", {}, hmac_key=LAGO_HMAC_KEY)
        assert (await client.post(LAGO, content=raw, headers=headers)).status_code == 503
        init = telegram_init_data(TELEGRAM_BOT_TOKEN, TG_USER)
        assert (await client.post(TELEGRAM, json={"init_data": init})).status_code == 503
