"""The real stripe SDK against the fake Stripe: every object parses, errors map to the SDK's types."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from creditgate_harness.fakes.stripe import FakeStripe
from creditgate_harness.servers import ThreadedServer

pytestmark = pytest.mark.contract


@pytest.fixture
def client() -> Iterator[tuple[stripe.StripeClient, FakeStripe]]:
    fake = FakeStripe(api_key="sk_test_sdk")
    server = ThreadedServer(fake.app).start()
    yield stripe.StripeClient("sk_test_sdk", base_addresses={"api": server.url}, max_network_retries=0), fake
    server.stop()


def checkout_params(cents: int = 1000) -> dict[str, object]:
    return {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {"currency": "usd", "unit_amount": cents, "product_data": {"name": "credits"}},
            }
        ],
        "metadata": {"account_id": "1", "credits": "1000.00"},
        "payment_intent_data": {"metadata": {"account_id": "1"}},
        "success_url": "https://example.test/ok",
        "cancel_url": "https://example.test/cancel",
    }


def test_sdk_parses_every_object(client: tuple[stripe.StripeClient, FakeStripe]) -> None:
    sdk, fake = client
    customer = sdk.v1.customers.create(params={"email": "a@example.test"})
    assert isinstance(customer, stripe.Customer)
    assert sdk.v1.customers.retrieve(customer.id).email == "a@example.test"
    session = sdk.v1.checkout.sessions.create(params={**checkout_params(), "customer": customer.id})  # type: ignore[arg-type]
    assert isinstance(session, stripe.checkout.Session)
    assert (session.amount_total, session.status, session.metadata["credits"]) == (1000, "open", "1000.00")
    fake.complete_checkout_session(session.id)
    paid = sdk.v1.checkout.sessions.retrieve(session.id)
    assert paid.payment_status == "paid"
    assert isinstance(paid.payment_intent, str)
    intent = sdk.v1.payment_intents.retrieve(paid.payment_intent)
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.status == "succeeded"
    refund = sdk.v1.refunds.create(params={"payment_intent": intent.id, "amount": 400})
    assert isinstance(refund, stripe.Refund)
    assert refund.amount == 400
    charge = sdk.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_refunded, charge.refunded) == (400, False)
    portal = sdk.v1.billing_portal.sessions.create(params={"customer": customer.id, "return_url": "https://x.test"})
    assert isinstance(portal, stripe.billing_portal.Session)
    expired = sdk.v1.checkout.sessions.create(params=checkout_params())  # type: ignore[arg-type]
    assert sdk.v1.checkout.sessions.expire(expired.id).status == "expired"
    assert [e["type"] for e in fake.events] == [
        "checkout.session.completed",
        "charge.refunded",
        "checkout.session.expired",
    ]
    for event in fake.events:
        assert stripe.Event.construct_from(event, "sk_test_sdk").data.object["object"] in {"checkout.session", "charge"}


def test_idempotency_replays_and_conflicts(client: tuple[stripe.StripeClient, FakeStripe]) -> None:
    sdk, fake = client
    first = sdk.v1.customers.create(params={"email": "a@example.test"}, options={"idempotency_key": "k1"})
    again = sdk.v1.customers.create(params={"email": "a@example.test"}, options={"idempotency_key": "k1"})
    assert first.id == again.id
    assert len([o for o in fake.objects.values() if o["object"] == "customer"]) == 1
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.customers.create(params={"email": "b@example.test"}, options={"idempotency_key": "k1"})


def test_errors_are_the_sdks_types(client: tuple[stripe.StripeClient, FakeStripe]) -> None:
    sdk, fake = client
    with pytest.raises(stripe.InvalidRequestError) as missing:
        sdk.v1.checkout.sessions.retrieve("cs_nope")
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as small:
        sdk.v1.checkout.sessions.create(params=checkout_params(cents=10))  # type: ignore[arg-type]
    assert small.value.code == "amount_too_small"
    session = sdk.v1.checkout.sessions.create(params=checkout_params())  # type: ignore[arg-type]
    fake.complete_checkout_session(session.id)
    intent = sdk.v1.checkout.sessions.retrieve(session.id).payment_intent
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.refunds.create(params={"payment_intent": str(intent), "amount": 5000})
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient(
            "sk_test_wrong",
            base_addresses={"api": sdk._requestor.base_addresses["api"]},  # type: ignore[attr-defined]
            max_network_retries=0,
        ).v1.customers.create(params={})
