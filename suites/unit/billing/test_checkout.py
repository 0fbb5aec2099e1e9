"""app/billing/service.py and routes: checkout → pay → webhook → credits, portal, payments, bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.billing.service import calculate_credit_amount
from creditgate.db.models import Payment
from creditgate.settings import Settings
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.fakes import StripeFake


@pytest.mark.parametrize(
    ("usd", "credits"), [("1", "100.00"), ("10.00", "1000.00"), ("12.34", "1234.00"), ("10000", "1000000.00")]
)
def test_calculate_credit_amount(usd: str, credits: str) -> None:
    assert calculate_credit_amount(Decimal(usd)) == Decimal(credits)


@pytest.mark.parametrize(
    ("usd", "why"),
    [
        ("0", "amount must be a positive number of dollars"),
        ("-5", "amount must be a positive number of dollars"),
        ("0.99", "the smallest top-up is $1"),
        ("10000.01", "the largest top-up is $10000"),
        ("1.001", "amount must be whole cents"),
        ("NaN", "amount must be a positive number of dollars"),
        ("Infinity", "amount must be a positive number of dollars"),
        ("abc", "amount must be a number of dollars"),
        (None, "amount must be a number of dollars"),
    ],
)
def test_calculate_credit_amount_rejects_and_says_why(usd: str, why: str) -> None:
    with pytest.raises(ValueError) as refused:
        calculate_credit_amount(usd)  # type: ignore[arg-type]
    assert str(refused.value) == why  # the 422 a user reads


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
    paths = [path for _, path, _ in fake_stripe.state.requests]  # the customer is asked for once, then remembered
    assert paths == ["/v1/customers", "/v1/checkout/sessions", "/v1/checkout/sessions", "/v1/billing_portal/sessions"]


async def test_what_stripe_is_asked_for_customer_checkout_and_portal(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_settings: Settings, fake_stripe: StripeFake
) -> None:
    """The customer pays what the line item says, and the webhook finds the account from what the session carries:
    every parameter Stripe receives is pinned here (the fake records them as Stripe decodes the form)."""
    user, account = cg_funded_user, str(cg_funded_user.account_id)
    checkout = await async_client.post("/billing/checkout", json={"amount_usd": "12.34"}, headers=user.headers)
    portal = await async_client.post("/billing/portal", headers=user.headers)
    assert (checkout.status_code, portal.status_code) == (200, 200)
    (_, customers, customer), (_, sessions, session), (_, portals, portal_params) = fake_stripe.state.requests
    assert (customers, sessions, portals) == ("/v1/customers", "/v1/checkout/sessions", "/v1/billing_portal/sessions")
    assert customer == {"email": user.email, "metadata": {"account_id": account}}
    assert "creditgate-customer-" + account in fake_stripe.state._idempotency  # a retried create makes no twin
    customer_id = fake_stripe.state.get(checkout.json()["id"])["customer"]
    credits = {"account_id": account, "credits": "1234.00"}
    assert session == {
        "mode": "payment",
        "customer": customer_id,
        "client_reference_id": account,
        "line_items": [
            {
                "quantity": "1",
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "1234",
                    "product_data": {"name": "1234.00 creditgate credits"},
                },
            }
        ],
        "metadata": credits,
        "payment_intent_data": {"metadata": credits},
        "success_url": cg_settings.checkout_success_url,
        "cancel_url": cg_settings.checkout_cancel_url,
    }
    assert portal_params == {"customer": customer_id, "return_url": cg_settings.portal_return_url}
    payments = (await async_client.get("/billing/payments", headers=user.headers)).json()["data"]
    assert [(p["status"], p["amount_usd"], p["credits"]) for p in payments] == [("pending", "12.34", "1234.00")]


async def test_payments_are_listed_newest_first_a_page_at_a_time(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_user_factory: UserFactory,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    fake_stripe: StripeFake,
) -> None:
    for usd in ("1", "2", "3", "4"):
        made = await async_client.post("/billing/checkout", json={"amount_usd": usd}, headers=cg_funded_user.headers)
        assert made.status_code == 200
    async with cg_sessionmaker() as s, s.begin():  # by time, then by id: $2 newest, $1 and $3 at the same moment
        ids = dict((await s.execute(select(Payment.amount_cents, Payment.id))).all())
        when = {100: datetime(2026, 1, 2, tzinfo=UTC), 200: datetime(2026, 1, 3, tzinfo=UTC)}
        when |= {300: when[100], 400: datetime(2026, 1, 1, tzinfo=UTC)}
        for cents, at in when.items():
            await s.execute(update(Payment).where(Payment.id == ids[cents]).values(created_at=at))

    async def page(user: TestUser, query: str) -> tuple[list[str], int]:
        found = (await async_client.get(f"/billing/payments?{query}", headers=user.headers)).json()
        return [p["amount_usd"] for p in found["data"]], found["total"]

    assert await page(cg_funded_user, "") == (["2.00", "3.00", "1.00", "4.00"], 4)
    assert await page(cg_funded_user, "limit=2&offset=1") == (["3.00", "1.00"], 4)
    assert await page(await cg_user_factory(), "") == ([], 0)


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
