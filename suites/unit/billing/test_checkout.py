"""app/billing/service.py and routes: checkout → pay → webhook → credits, portal, payments, bad input."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from creditgate.billing.service import calculate_credit_amount
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.gateway import TestUser


@pytest.mark.parametrize(
    ("usd", "credits"), [("1", "100.00"), ("10.00", "1000.00"), ("12.34", "1234.00"), ("10000", "1000000.00")]
)
def test_calculate_credit_amount(usd: str, credits: str) -> None:
    assert calculate_credit_amount(Decimal(usd)) == Decimal(credits)


@pytest.mark.parametrize("usd", ["0", "-5", "0.99", "10000.01", "1.001", "NaN", "Infinity", "abc"])
def test_calculate_credit_amount_rejects(usd: str) -> None:
    with pytest.raises(ValueError):
        calculate_credit_amount(usd)  # type: ignore[arg-type]


async def balance(client: httpx.AsyncClient, user: TestUser) -> str:
    return str((await client.get("/user/balance", headers=user.headers)).json()["balance"])


@pytest.mark.critical
async def test_checkout_pay_webhook_credits_once(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    response = await async_client.post(
        "/billing/checkout", json={"amount_usd": "25.00"}, headers=cg_funded_user.headers
    )
    assert response.status_code == 200, response.text
    checkout = response.json()
    assert checkout["credits"] == "2500.00"
    assert checkout["url"].startswith("https://checkout.stripe.test/")
    stripe_session = fake_stripe.state.get(checkout["id"])
    assert stripe_session["metadata"] == {"account_id": str(cg_funded_user.account_id), "credits": "2500.00"}
    assert stripe_session["amount_total"] == 2500
    assert await balance(async_client, cg_funded_user) == "1000.00"  # nothing until Stripe says paid

    fake_stripe.complete(checkout["id"])
    results = await cg_stripe_webhooks.deliver_pending(times=3)
    assert [r.json()["outcome"] for r in results] == ["credited", "duplicate", "duplicate"]
    assert await balance(async_client, cg_funded_user) == "3500.00"

    payments = (await async_client.get("/billing/payments", headers=cg_funded_user.headers)).json()
    assert payments["total"] == 1
    assert payments["data"][0]["status"] == "paid"
    assert payments["data"][0]["amount_usd"] == "25.00"


async def test_a_second_event_for_the_same_payment_does_not_credit_again(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    checkout = (
        await async_client.post("/billing/checkout", json={"amount_usd": "5"}, headers=cg_funded_user.headers)
    ).json()
    fake_stripe.complete(checkout["id"])
    completed = cg_stripe_webhooks.pending()[0]
    await cg_stripe_webhooks.deliver_pending()
    # async_payment_succeeded has a different event id but names the same session.
    twin = {**completed, "id": "evt_twin", "type": "checkout.session.async_payment_succeeded"}
    assert (await cg_stripe_webhooks.send(twin)).json()["outcome"] == "already credited"
    assert await balance(async_client, cg_funded_user) == "1500.00"


async def test_portal_and_customer_reuse(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, fake_stripe: StripeFake
) -> None:
    for _ in range(2):
        assert (
            await async_client.post("/billing/checkout", json={"amount_usd": "1"}, headers=cg_funded_user.headers)
        ).status_code == 200
    portal = await async_client.post("/billing/portal", headers=cg_funded_user.headers)
    assert portal.status_code == 200
    assert portal.json()["url"].startswith("https://billing.stripe.test/")
    customers = [o for o in fake_stripe.state.objects.values() if o["object"] == "customer"]
    assert len(customers) == 1


@pytest.mark.parametrize("amount", ["0", "0.5", "-1", "100000", "1.234", "ten"])
async def test_bad_amounts_are_422(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, fake_stripe: StripeFake, amount: str
) -> None:
    response = await async_client.post("/billing/checkout", json={"amount_usd": amount}, headers=cg_funded_user.headers)
    assert response.status_code == 422
    assert fake_stripe.state.requests == []


async def test_stripe_refusing_our_key_is_502(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, fake_stripe: StripeFake
) -> None:
    fake_stripe.state.api_key = "sk_test_rotated"
    response = await async_client.post("/billing/checkout", json={"amount_usd": "5"}, headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "payment_provider_error"


async def test_billing_without_stripe_configured_is_503(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    response = await async_client.post("/billing/checkout", json={"amount_usd": "5"}, headers=cg_funded_user.headers)
    assert response.status_code == 503
    assert (await async_client.post("/billing/webhook", content=b"{}")).status_code == 503
