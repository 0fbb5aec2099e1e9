"""app/billing/webhooks.py: signatures, duplicates, order, refunds and disputes — credited exactly once."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Account, LedgerEntry, Org, Payment, Subscription
from creditgate_harness.fakes.stripe import StripeWebhooks, sign_payload
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.gateway import TestUser, UserFactory

pytestmark = pytest.mark.critical


async def balance(client: httpx.AsyncClient, user: TestUser) -> str:
    return str((await client.get("/user/balance", headers=user.headers)).json()["balance"])


async def paid_checkout(client: httpx.AsyncClient, user: TestUser, fake: StripeFake, usd: str) -> str:
    checkout = (await client.post("/billing/checkout", json={"amount_usd": usd}, headers=user.headers)).json()
    fake.complete(checkout["id"])
    return str(checkout["id"])


def payment_intent_of(fake: StripeFake, session_id: str) -> str:
    return str(fake.state.get(session_id)["payment_intent"])


WHY = {
    "missing": "missing Stripe-Signature header",
    "garbage": "signature verification failed: ",
    "wrong-secret": "signature verification failed: No signatures found matching the expected signature",
    "tampered": "signature verification failed: No signatures found matching the expected signature",
    "too-old": "signature verification failed: Timestamp outside the tolerance zone",
    "future": "signature timestamp is in the future",
    "not-json": "the payload is not a JSON event",
}


@pytest.mark.parametrize("case", list(WHY))
async def test_bad_signatures_are_400_and_apply_nothing(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
    case: str,
) -> None:
    await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    event = cg_stripe_webhooks.pending()[0]
    now = int(time.time())
    if case == "not-json":
        payload = b"not json"
        header = sign_payload(payload, secrets=[fake_stripe.webhook_secret])
        response = await async_client.post("/billing/webhook", content=payload, headers={"Stripe-Signature": header})
    else:
        kwargs: dict[str, object] = {
            "missing": {"signature": ""},
            "garbage": {"signature": "t=abc,v1=nothex"},
            "wrong-secret": {"secrets": ["whsec_someone_else"]},
            "tampered": {"tamper": True},
            "too-old": {"timestamp": now - 301},
            "future": {"timestamp": now + 3600},
        }[case]  # type: ignore[assignment]
        response = await cg_stripe_webhooks.send(event, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_signature"
    assert response.json()["error"]["message"].startswith(WHY[case])  # what an operator reads in Stripe's log
    assert await balance(async_client, cg_funded_user) == "1000.00"


async def test_tolerance_edge_and_rotated_secrets_are_accepted(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    event = cg_stripe_webhooks.pending()[0]
    ok = await cg_stripe_webhooks.send(
        event, timestamp=int(time.time()) - 290, secrets=["whsec_old", fake_stripe.webhook_secret]
    )
    assert ok.status_code == 200
    assert await balance(async_client, cg_funded_user) == "2000.00"


def test_our_signer_matches_the_sdk_verifier() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}).encode()
    now = int(time.time())
    header = sign_payload(payload, secrets=["whsec_a", "whsec_b"], timestamp=now)
    for secret in ("whsec_a", "whsec_b"):
        assert stripe.Webhook.construct_event(payload, header, secret).id == "evt_1"
    for bad in (
        sign_payload(payload, secrets=["whsec_c"]),
        sign_payload(payload, secrets=["whsec_a"], timestamp=now - 400),
    ):
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(payload, bad, "whsec_a")


async def test_shuffled_triplicate_delivery_credits_each_payment_once(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    users = [await cg_user_factory() for _ in range(3)]
    for user, usd in zip(users, ("1", "2.50", "7"), strict=True):
        await paid_checkout(async_client, user, fake_stripe, usd)
    responses = await cg_stripe_webhooks.deliver_pending(times=3, shuffle=True, seed=7)
    assert {r.status_code for r in responses} == {200}
    assert [await balance(async_client, u) for u in users] == ["100.00", "250.00", "700.00"]


async def test_full_refund_takes_the_credits_back(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    session_id = await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    fake_stripe.state.create_refund({"payment_intent": payment_intent_of(fake_stripe, session_id)})
    outcomes = [r.json()["outcome"] for r in await cg_stripe_webhooks.deliver_pending(times=2)]
    assert outcomes == ["credited", "duplicate", "reversed", "duplicate"]
    assert await balance(async_client, cg_funded_user) == "1000.00"
    payment = (await async_client.get("/billing/payments", headers=cg_funded_user.headers)).json()["data"][0]
    assert (payment["status"], payment["refunded_usd"], payment["reversed_credits"]) == ("refunded", "10.00", "1000.00")
    # One notification each for the payment and the refund, despite the duplicate deliveries.
    listed = (await async_client.get("/user/notifications", headers=cg_funded_user.headers)).json()["data"]
    assert sorted((n["type"], n["data"]["credits"]) for n in listed) == [
        ("payment_received", "1000.00"),
        ("refund", "1000.00"),
    ]


async def test_partial_refunds_in_any_order_converge(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    session_id = await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    intent = payment_intent_of(fake_stripe, session_id)
    fake_stripe.state.create_refund({"payment_intent": intent, "amount": "300"})
    fake_stripe.state.create_refund({"payment_intent": intent, "amount": "200"})
    completed, first, second = cg_stripe_webhooks.pending()
    for event in (completed, second, first, second):
        assert (await cg_stripe_webhooks.send(event)).status_code == 200
    assert await balance(async_client, cg_funded_user) == "1500.00"  # 1000 + 1000 − 500


async def test_refund_before_completion_is_applied_when_the_credits_land(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    session_id = await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    fake_stripe.state.create_refund({"payment_intent": payment_intent_of(fake_stripe, session_id)})
    completed, refunded = cg_stripe_webhooks.pending()
    assert (await cg_stripe_webhooks.send(refunded)).json()["outcome"] == "recorded; applied when the payment completes"
    assert await balance(async_client, cg_funded_user) == "1000.00"
    assert (await cg_stripe_webhooks.send(completed)).json()["outcome"] == "credited"
    assert (await cg_stripe_webhooks.send(completed)).json()["outcome"] == "duplicate"
    assert await balance(async_client, cg_funded_user) == "1000.00"


async def test_refund_after_spend_collects_what_it_can_and_the_ledger_balances(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    user = await cg_user_factory()
    session_id = await paid_checkout(async_client, user, fake_stripe, "10")
    await cg_stripe_webhooks.deliver_pending()
    body = {"model": "test-model", "max_tokens": 100_000, "messages": [{"role": "user", "content": "spend"}]}
    assert (await async_client.post("/v1/chat/completions", json=body, headers=user.headers)).status_code == 200
    left = await balance(async_client, user)
    fake_stripe.state.create_refund({"payment_intent": payment_intent_of(fake_stripe, session_id)})
    outcome = (await cg_stripe_webhooks.deliver_pending())[0].json()["outcome"]
    assert left != "1000.00"
    assert outcome == "partially reversed (credits already spent)"
    assert await balance(async_client, user) == "0.00"
    payment = (await async_client.get("/billing/payments", headers=user.headers)).json()["data"][0]
    assert payment["reversed_credits"] == left


async def test_dispute_before_completion_is_applied_when_the_credits_land(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    """Found by the billing state machine: a dispute carries no metadata, so it must wait for its payment."""
    session_id = await paid_checkout(async_client, cg_funded_user, fake_stripe, "1")
    charge = fake_stripe.state.get(payment_intent_of(fake_stripe, session_id))["latest_charge"]
    fake_stripe.state.create_dispute({"charge": charge})
    completed, disputed = cg_stripe_webhooks.pending()
    assert (await cg_stripe_webhooks.send(disputed)).json()["outcome"] == "recorded; applied when the payment completes"
    assert (await cg_stripe_webhooks.send(completed)).json()["outcome"] == "credited"
    assert await balance(async_client, cg_funded_user) == "1000.00"


async def test_dispute_reverses_the_disputed_amount(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    session_id = await paid_checkout(async_client, cg_funded_user, fake_stripe, "20")
    charge = fake_stripe.state.get(payment_intent_of(fake_stripe, session_id))["latest_charge"]
    fake_stripe.state.create_dispute({"charge": charge, "amount": "500"})
    outcomes = [r.json()["outcome"] for r in await cg_stripe_webhooks.deliver_pending()]
    assert outcomes == ["credited", "reversed"]
    assert await balance(async_client, cg_funded_user) == "2500.00"  # 1000 + 2000 − 500
    payment = (await async_client.get("/billing/payments", headers=cg_funded_user.headers)).json()["data"][0]
    assert payment["status"] == "disputed"


async def test_unknown_and_foreign_events_are_ignored(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    unknown = {"id": "evt_u", "object": "event", "type": "customer.created", "data": {"object": {}}}
    assert (await cg_stripe_webhooks.send(unknown)).json()["outcome"] == "ignored"
    foreign = {
        "id": "evt_f",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_foreign", "payment_status": "paid", "metadata": {}}},
    }
    assert (await cg_stripe_webhooks.send(foreign)).json()["outcome"] == "unknown session"
    unpaid = {
        "id": "evt_p",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_x", "payment_status": "unpaid"}},
    }
    assert (await cg_stripe_webhooks.send(unpaid)).json()["outcome"] == "not paid yet"
    refund = {
        "id": "evt_r",
        "object": "event",
        "type": "charge.refunded",
        "data": {"object": {"id": "ch_x", "amount_refunded": 100}},
    }
    assert (await cg_stripe_webhooks.send(refund)).json()["outcome"] == "unknown charge"
    assert await balance(async_client, cg_funded_user) == "1000.00"


async def test_stripe_subscription_events_set_the_plan(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_admin_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    await async_client.post("/billing/portal", headers=cg_funded_user.headers)  # creates the Stripe customer
    customer = next(o["id"] for o in fake_stripe.state.objects.values() if o["object"] == "customer")
    sub = {
        "id": "sub_1",
        "object": "subscription",
        "customer": customer,
        "status": "active",
        "items": {"data": [{"price": {"lookup_key": "professional"}}]},
    }
    created = {"id": "evt_s1", "object": "event", "type": "customer.subscription.created", "data": {"object": sub}}
    assert (await cg_stripe_webhooks.send(created)).json()["outcome"] == "plan professional"
    deleted = {
        **created,
        "id": "evt_s2",
        "type": "customer.subscription.deleted",
        "data": {"object": {**sub, "status": "canceled"}},
    }
    assert (await cg_stripe_webhooks.send(deleted)).json()["outcome"] == "subscription ended"
    stranger = {**created, "id": "evt_s3", "data": {"object": {**sub, "customer": "cus_nobody"}}}
    assert (await cg_stripe_webhooks.send(stranger)).json()["outcome"] == "unknown customer"


async def test_a_session_we_have_no_record_of_is_credited_from_its_own_metadata(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_stripe_webhooks: StripeWebhooks
) -> None:
    """E.g. the gateway crashed between creating the Checkout Session and recording it."""
    session = {
        "id": "cs_unrecorded",
        "object": "checkout.session",
        "payment_status": "paid",
        "amount_total": 500,
        "payment_intent": "pi_unrecorded",
        "metadata": {"account_id": str(cg_funded_user.account_id), "credits": "500.00"},
    }
    event = {
        "id": "evt_unrecorded",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": session},
    }
    assert (await cg_stripe_webhooks.send(event)).json()["outcome"] == "credited"
    assert await balance(async_client, cg_funded_user) == "1500.00"
    refund = {
        "id": "evt_unrecorded_refund",
        "object": "event",
        "type": "charge.refunded",
        "data": {"object": {"id": "ch_u", "payment_intent": "pi_unrecorded", "amount_refunded": 500}},
    }
    assert (await cg_stripe_webhooks.send(refund)).json()["outcome"] == "reversed"
    assert (await cg_stripe_webhooks.send({**refund, "id": "evt_again"})).json()["outcome"] == "already reversed"
    assert await balance(async_client, cg_funded_user) == "1000.00"
    for metadata in ({"account_id": "999999", "credits": "1"}, {"account_id": "x"}):
        stranger = {
            **event,
            "id": f"evt_{metadata['account_id']}",
            "data": {"object": {**session, "id": "cs_other", "metadata": metadata}},
        }
        assert (await cg_stripe_webhooks.send(stranger)).json()["outcome"] == "unknown session"


async def test_signed_payloads_that_are_not_events_are_400(
    async_client: httpx.AsyncClient, fake_stripe: StripeFake, cg_stripe_webhooks: StripeWebhooks
) -> None:
    for payload, why in (
        (b"[1, 2]", "the payload is not a JSON event"),
        (b'{"type": "x"}', "the payload is not a Stripe event"),
    ):
        header = sign_payload(payload, secrets=[fake_stripe.webhook_secret])
        response = await async_client.post("/billing/webhook", content=payload, headers={"Stripe-Signature": header})
        assert (response.status_code, response.json()["error"]["message"]) == (400, why)
    no_intent = {
        "id": "evt_d",
        "object": "event",
        "type": "charge.dispute.created",
        "data": {"object": {"id": "dp_x", "amount": 100}},
    }
    assert (await cg_stripe_webhooks.send(no_intent)).json()["outcome"] == "unknown charge"


async def test_subscription_with_an_unknown_plan_changes_nothing(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    await async_client.post("/billing/portal", headers=cg_funded_user.headers)
    customer = next(o["id"] for o in fake_stripe.state.objects.values() if o["object"] == "customer")
    sub = {"id": "sub_2", "customer": customer, "status": "active", "metadata": {"plan": "platinum"}}
    event = {"id": "evt_p", "object": "event", "type": "customer.subscription.updated", "data": {"object": sub}}
    assert (await cg_stripe_webhooks.send(event)).json()["outcome"] == "unknown plan 'platinum'"


async def _subscriptions(sm: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, str, str | None]]:
    async with sm() as s:
        rows = await s.execute(
            select(Subscription.subject, Subscription.plan, Subscription.source, Subscription.external_id)
        )
        return sorted(tuple(r) for r in rows)  # type: ignore[misc]


async def test_a_subscription_keeps_its_plan_while_it_is_live_and_ends_on_deletion(
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    """The plan follows Stripe's status: active, trialing and past_due keep it (Stripe is still collecting), any
    other status or the deletion event ends it; an org's customer sets the org's plan, a user's the user's."""
    async with cg_sessionmaker() as s, s.begin():
        org = Org(name="acme")
        s.add(org)
        await s.flush()
        s.add(Account(org_id=org.id, balance=0, stripe_customer_id="cus_org"))
        user_account = await s.get(Account, cg_funded_user.account_id)
        assert user_account is not None
        user_account.stripe_customer_id = "cus_user"
    live = {"status": "active", "items": {"data": [{"price": {"lookup_key": "professional"}}]}}
    sent = iter(range(100))

    async def event(kind: str, customer: str, **changes: object) -> str:
        sub = {"id": f"sub_{customer}", "object": "subscription", "customer": customer, **live, **changes}
        body = {"id": f"evt_{next(sent)}", "object": "event", "type": kind, "data": {"object": sub}}
        return str((await cg_stripe_webhooks.send(body)).json()["outcome"])

    assert await event("customer.subscription.created", "cus_org") == "plan professional"
    assert await event("customer.subscription.created", "cus_user", metadata={"plan": "platform"}) == "plan platform"
    user, org_subject = f"user:{cg_funded_user.id}", f"org:{org.id}"
    expected = [(org_subject, "professional", "stripe", "sub_cus_org"), (user, "platform", "stripe", "sub_cus_user")]
    assert await _subscriptions(cg_sessionmaker) == sorted(expected)
    for status in ("trialing", "past_due"):
        assert await event("customer.subscription.updated", "cus_org", status=status) == "plan professional"
    assert await event("customer.subscription.updated", "cus_org", status="unpaid") == "subscription ended"
    assert await event("customer.subscription.deleted", "cus_user", status="active") == "subscription ended"
    assert await _subscriptions(cg_sessionmaker) == []


async def test_partial_refunds_after_spending_accumulate_what_is_reversed(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    user = await cg_user_factory()
    session_id = await paid_checkout(async_client, user, fake_stripe, "10")
    assert [r.json()["outcome"] for r in await cg_stripe_webhooks.deliver_pending()] == ["credited"]
    intent = payment_intent_of(fake_stripe, session_id)
    for cents in ("300", "200"):
        fake_stripe.state.create_refund({"payment_intent": intent, "amount": cents})
    assert [r.json()["outcome"] for r in await cg_stripe_webhooks.deliver_pending()] == ["reversed", "reversed"]
    assert await balance(async_client, user) == "500.00"
    payment = (await async_client.get("/billing/payments", headers=user.headers)).json()["data"][0]
    assert (payment["status"], payment["refunded_usd"], payment["reversed_credits"]) == (
        "partially_refunded",
        "5.00",
        "500.00",
    )
    async with cg_sessionmaker() as s:
        entries = await s.execute(
            select(LedgerEntry.type, LedgerEntry.amount, LedgerEntry.description, LedgerEntry.idempotency_key)
            .where(LedgerEntry.account_id == user.account_id)
            .order_by(LedgerEntry.id)
        )
        paid = (await s.execute(select(Payment.id, Payment.paid_at, Payment.payment_intent_id))).one()
    reversal = f"reversal of Stripe payment {session_id}"
    assert [tuple(e) for e in entries] == [
        ("purchase", 100_000, f"Stripe checkout {session_id}", f"stripe:checkout:{session_id}"),
        ("refund", -30_000, reversal, f"stripe:reversal:{paid.id}:0"),
        ("refund", -20_000, reversal, f"stripe:reversal:{paid.id}:30000"),
    ]
    assert (paid.paid_at is not None, paid.payment_intent_id) == (True, intent)


def test_verify_keeps_its_tolerance_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from creditgate.billing.webhooks import InvalidSignature, verify

    payload = json.dumps({"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}).encode()
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)  # one clock for this module and the SDK

    def signed(at: int) -> str:
        return sign_payload(payload, secrets=["whsec_a"], timestamp=at)

    for at in (now - 60, now, now + 60):
        assert verify(payload, signed(at), secret="whsec_a", tolerance=60)["id"] == "evt_1"
    for at, why in ((now - 61, "Timestamp outside the tolerance zone"), (now + 61, "in the future")):
        with pytest.raises(InvalidSignature, match=why):
            verify(payload, signed(at), secret="whsec_a", tolerance=60)
    assert verify(payload, signed(now - 300), secret="whsec_a")["id"] == "evt_1"  # Stripe's default: 5 minutes
    with pytest.raises(InvalidSignature, match="in the future"):
        verify(payload, signed(now + 301), secret="whsec_a")
