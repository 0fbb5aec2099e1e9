"""app/billing/webhooks.py: signatures, duplicates, order, refunds and disputes — credited exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Account, LedgerEntry, Org, Payment, Subscription
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.stripe import StripeWebhooks, sign_payload
from creditgate_harness.fixtures.fakes import StripeFake

pytestmark = pytest.mark.critical


async def balance(client: httpx.AsyncClient, user: TestUser) -> str:
    return str((await client.get("/user/balance", headers=user.headers)).json()["balance"])


async def paid_checkout(client: httpx.AsyncClient, user: TestUser, fake: StripeFake, usd: str) -> str:
    checkout = (await client.post("/billing/checkout", json={"amount_usd": usd}, headers=user.headers)).json()
    fake.complete(checkout["id"])
    return str(checkout["id"])


def payment_intent_of(fake: StripeFake, session_id: str) -> str:
    return str(fake.state.get(session_id)["payment_intent"])


async def set_customer(sm: async_sessionmaker[AsyncSession], user: TestUser, customer: str) -> None:
    """``user``'s account is Stripe's ``customer`` (what checkout records before it opens a session)."""
    async with sm() as s, s.begin():
        account = await s.get(Account, user.account_id)
        assert account is not None
        account.stripe_customer_id = customer


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
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    """E.g. the gateway crashed between creating the Checkout Session and recording it (the customer it was opened
    for is already on the account: checkout stores it first)."""
    await set_customer(cg_sessionmaker, cg_funded_user, "cus_unrecorded")
    session = {
        "id": "cs_unrecorded",
        "object": "checkout.session",
        "payment_status": "paid",
        "amount_total": 500,
        "currency": "usd",
        "customer": "cus_unrecorded",
        "client_reference_id": str(cg_funded_user.account_id),
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


# -- issue 26, class 5: signed garbage ------------------------------------------------------------------------
def _fullwidth(text: str) -> str:
    return text.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


@pytest.mark.parametrize(
    ("stamp", "signed_at"),
    [
        ("+{future}", "future"),  # F6: int() reads it, the old future check did not (it was not .isdigit())
        ("+{now}", "now"),
        (" {now}", "now"),
        ("{now} ", "now"),
        ("{underscored}", "now"),
        ("0{now}", "now"),
        ("{now}.0", "now"),
        ("{fullwidth}", "now"),  # int() reads other scripts' digits too
        ("{arabic}", "now"),
        ("{superscript}", "now"),  # .isdigit() but not int(): the old code raised ValueError (a 500)
        ("{now},t={now}", "now"),
        ("{now},t={future}", "now"),
        ("{future},t={now}", "future"),
    ],
)
def test_signature_timestamps_are_plain_ascii_digits_once(
    monkeypatch: pytest.MonkeyPatch, stamp: str, signed_at: str
) -> None:
    """Each header carries a v1 that matches the stamp as Python's ``int()`` (and so the SDK) reads it."""
    from creditgate.billing.webhooks import verify
    from creditgate.errors import InvalidSignature

    payload = json.dumps({"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}).encode()
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    forms = {
        "now": str(now),
        "future": str(now + 10**6),
        "underscored": f"{now:_}",
        "fullwidth": _fullwidth(str(now)),
        "arabic": str(now).translate({ord(d): 0x0660 + int(d) for d in "0123456789"}),
        "superscript": str(now).replace("1", "¹").replace("2", "²").replace("3", "³"),
    }
    signed = sign_payload(payload, secrets=["whsec_a"], timestamp=int(forms[signed_at]))
    header = signed.replace(f"t={forms[signed_at]}", "t=" + stamp.format(**forms))
    with pytest.raises(InvalidSignature, match="signature"):
        verify(payload, header, secret="whsec_a")
    assert verify(payload, sign_payload(payload, secrets=["whsec_a"], timestamp=now), secret="whsec_a")["id"] == "evt_1"


@pytest.mark.parametrize(
    "header",
    ["t={now}", "t={now},v0={sig}", "t={now}, v1={sig}", " t={now},v1={sig}", "t={now},,v1={sig}", "T={now},v1={sig}"],
)
def test_signature_headers_in_other_forms_are_refused(monkeypatch: pytest.MonkeyPatch, header: str) -> None:
    from creditgate.billing.webhooks import verify
    from creditgate.errors import InvalidSignature

    payload = b'{"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}'
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    sig = sign_payload(payload, secrets=["whsec_a"], timestamp=now).split("v1=")[1]
    with pytest.raises(InvalidSignature, match="signature"):
        verify(payload, header.format(now=now, sig=sig), secret="whsec_a")
    rotated = f"t={now},v1={'0' * 64},v0={'ab' * 32},v1={sig}"  # one v1 matching is enough, as Stripe says
    assert verify(payload, rotated, secret="whsec_a")["id"] == "evt_1"


def unrecorded_session(user: TestUser, *, cents: int = 100, **changes: object) -> dict[str, object]:
    """The Checkout Session the gateway would have opened for ``user`` (customer ``cus_<account id>``)."""
    session: dict[str, object] = {
        "id": f"cs_unrecorded_{user.account_id}",
        "object": "checkout.session",
        "payment_status": "paid",
        "amount_total": cents,
        "currency": "usd",
        "customer": f"cus_{user.account_id}",
        "client_reference_id": str(user.account_id),
        "payment_intent": f"pi_unrecorded_{user.account_id}",
        "metadata": {"account_id": str(user.account_id), "credits": f"{cents}.00"},
    }
    return {**session, **changes}


def completed(obj: object, event_id: str = "evt_garbage") -> dict[str, object]:
    return {"id": event_id, "object": "event", "type": "checkout.session.completed", "data": {"object": obj}}


async def test_an_unrecorded_session_is_credited_what_was_paid_not_what_its_metadata_says(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """F7: $1 paid, metadata.credits 1,000,000 → the old code credited 1,000,000."""
    await set_customer(cg_sessionmaker, cg_funded_user, f"cus_{cg_funded_user.account_id}")
    metadata = {"account_id": str(cg_funded_user.account_id), "credits": "1000000"}
    response = await cg_stripe_webhooks.send(completed(unrecorded_session(cg_funded_user, metadata=metadata)))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "payment_mismatch"
    assert "metadata.credits '1000000' is not the 100.00 paid for" in response.json()["error"]["message"]
    assert "nothing credited" in caplog.text
    assert await balance(async_client, cg_funded_user) == "1000.00"
    genuine = completed(unrecorded_session(cg_funded_user), "evt_genuine")  # the same payment, told truthfully
    assert (await cg_stripe_webhooks.send(genuine)).json()["outcome"] == "credited"
    assert await balance(async_client, cg_funded_user) == "1100.00"


MISMATCHES = {
    "another customer": {"customer": "cus_someone_else"},
    "no customer": {"customer": None},
    "another currency": {"currency": "eur"},
    "zero-decimal currency": {"currency": "jpy", "amount_total": 100},
    "another account's metadata": {"metadata": {"account_id": "{other}", "credits": "100.00"}},
    "another client_reference_id": {"client_reference_id": "{other}"},
    "credits below the amount": {"metadata": {"account_id": "{mine}", "credits": "1.00"}},
    "no credits in metadata": {"metadata": {"account_id": "{mine}"}},
    "below the smallest top-up": {"amount_total": 50, "metadata": {"account_id": "{mine}", "credits": "50.00"}},
    "no amount": {"amount_total": None},
}


@pytest.mark.parametrize("case", list(MISMATCHES))
async def test_an_unrecorded_session_that_does_not_add_up_is_refused(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
    case: str,
) -> None:
    mine, other = await cg_user_factory(credits=10), await cg_user_factory(credits=10)
    for user in (mine, other):
        await set_customer(cg_sessionmaker, user, f"cus_{user.account_id}")
    ids = {"mine": str(mine.account_id), "other": str(other.account_id)}
    changes = json.loads(json.dumps(MISMATCHES[case]).replace("{mine}", ids["mine"]).replace("{other}", ids["other"]))
    response = await cg_stripe_webhooks.send(completed(unrecorded_session(mine, **changes)))
    assert (response.status_code, response.json()["error"]["code"]) == (422, "payment_mismatch"), response.text
    assert [await balance(async_client, u) for u in (mine, other)] == ["10.00", "10.00"]


KNOWN_MISMATCHES: dict[str, dict[str, Any]] = {
    "less paid": {"amount_total": 100},
    "more paid": {"amount_total": 100_000},
    "another currency": {"currency": "eur"},
    "another customer": {"customer": "cus_someone_else"},
    "inflated metadata": {"metadata": {"credits": "1000000.00"}},
    "another account's metadata": {"metadata": {"account_id": "999999"}},
    "another intent's charge": {"payment_intent": "pi_of_another_payment"},
}


@pytest.mark.parametrize("case", list(KNOWN_MISMATCHES))
async def test_a_recorded_session_that_does_not_match_its_payment_is_refused(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
    case: str,
) -> None:
    async with cg_sessionmaker() as s, s.begin():  # another payment already holds that intent
        s.add(
            Payment(
                account_id=cg_funded_user.account_id,
                checkout_session_id="cs_other",
                payment_intent_id="pi_of_another_payment",
                amount_cents=100,
                credits=10_000,
                status="paid",
            )
        )
    await paid_checkout(async_client, cg_funded_user, fake_stripe, "10")
    event = cg_stripe_webhooks.pending()[0]
    obj = event["data"]["object"]
    changes = KNOWN_MISMATCHES[case]
    if "metadata" in changes:
        changes = {"metadata": {**obj["metadata"], **changes["metadata"]}}
    forged = {**event, "id": "evt_forged", "data": {"object": {**obj, **changes}}}
    response = await cg_stripe_webhooks.send(forged)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "payment_mismatch"), response.text
    assert await balance(async_client, cg_funded_user) == "1000.00"
    assert (await cg_stripe_webhooks.send(event)).json()["outcome"] == "credited"  # the genuine one still is
    assert await balance(async_client, cg_funded_user) == "2000.00"


GARBAGE: dict[str, tuple[str, object]] = {
    # F8: each was a 500 (rolled back) before.
    "credits NaN": ("data.object.metadata.credits", "NaN"),
    "credits 1e30": ("data.object.metadata.credits", "1e30"),
    "credits Infinity": ("data.object.metadata.credits", "Infinity"),
    "object is a list": ("data.object", [1]),
    "object is a string": ("data.object", "cs_x"),
    "data is a list": ("data", [1]),
    "no data": ("data", None),
    "a 100k-character event id": ("id", "evt_" + "x" * 100_000),
    "an event id with NUL": ("id", "evt_\u0000"),
    "a type that is a number": ("type", 7),
    "a 100k-character session id": ("data.object.id", "cs_" + "x" * 100_000),
    "no session id": ("data.object.id", None),
    "session id a number": ("data.object.id", 12),
    "amount_total a string": ("data.object.amount_total", "100"),
    "amount_total a float": ("data.object.amount_total", 100.0),
    "amount_total a bool": ("data.object.amount_total", True),
    "amount_total negative": ("data.object.amount_total", -100),
    "amount_total beyond BigInteger": ("data.object.amount_total", 10**30),
    "currency a list": ("data.object.currency", ["usd"]),
    "customer an object": ("data.object.customer", {"id": "cus_x"}),
    "payment_intent 100k characters": ("data.object.payment_intent", "pi_" + "x" * 100_000),
    "payment_status a number": ("data.object.payment_status", 1),
    "metadata a list": ("data.object.metadata", ["account_id"]),
    "metadata values numbers": ("data.object.metadata.credits", 100),
}


def _put(event: dict[str, object], path: str, value: object) -> dict[str, object]:
    forged = json.loads(json.dumps(event))
    *parents, key = path.split(".")
    node = forged
    for parent in parents:
        node = node[parent]
    node[key] = value
    return forged  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", list(GARBAGE))
async def test_signed_malformed_events_are_4xx_in_our_error_shape_and_credit_nothing(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
    case: str,
) -> None:
    await set_customer(cg_sessionmaker, cg_funded_user, f"cus_{cg_funded_user.account_id}")
    path, value = GARBAGE[case]
    response = await cg_stripe_webhooks.send(_put(completed(unrecorded_session(cg_funded_user)), path, value))
    assert response.status_code in (400, 422), response.text
    error = response.json()["error"]
    assert error["code"] in {"malformed_event", "invalid_signature"}, error
    assert error["type"] in {"invalid_request", "invalid_signature"}, error
    assert await balance(async_client, cg_funded_user) == "1000.00"


OTHER_GARBAGE: dict[str, tuple[str, dict[str, object]]] = {
    "refund amount NaN": ("charge.refunded", {"payment_intent": "pi_x", "amount_refunded": "NaN"}),
    "refund amount 1e30": ("charge.refunded", {"payment_intent": "pi_x", "amount_refunded": 1e30}),
    "refund intent a list": ("charge.refunded", {"payment_intent": ["pi_x"], "amount_refunded": 1}),
    "dispute amount negative": ("charge.dispute.created", {"payment_intent": "pi_x", "amount": -1}),
    "dispute intent 100k": ("charge.dispute.created", {"payment_intent": "pi_" + "x" * 100_000, "amount": 1}),
    "subscription customer a list": ("customer.subscription.updated", {"customer": ["cus_x"], "status": "active"}),
    "subscription items a string": ("customer.subscription.updated", {"customer": "cus_x", "items": "x"}),
    "subscription items data [1]": ("customer.subscription.created", {"customer": "cus_x", "items": {"data": [1]}}),
    "subscription plan a number": ("customer.subscription.created", {"customer": "cus_x", "metadata": {"plan": 1}}),
}


@pytest.mark.parametrize("case", list(OTHER_GARBAGE))
async def test_other_signed_malformed_events_are_4xx(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_stripe_webhooks: StripeWebhooks, case: str
) -> None:
    kind, obj = OTHER_GARBAGE[case]
    response = await cg_stripe_webhooks.send({"id": "evt_g", "object": "event", "type": kind, "data": {"object": obj}})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "malformed_event"), response.text
    assert await balance(async_client, cg_funded_user) == "1000.00"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": "evt_n", "type": "checkout.session.completed", "data": {"object": {"amount_total": NaN}}}',
        b'{"id": "evt_n", "type": "x", "data": {"object": {"amount": Infinity}}}',
        b'{"id": "evt_n", "type": "x", "data": {"object": {"amount": ' + b"9" * 5000 + b"}}}",
        b'{"id": "evt_n", "type": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": "evt_n", "type": "x", "data": {"object": "\xff"}}',
    ],
    ids=["NaN", "Infinity", "5000 digits", "nested 100k deep", "not UTF-8"],
)
async def test_signed_payloads_that_are_not_json_are_400(
    async_client: httpx.AsyncClient, fake_stripe: StripeFake, payload: bytes
) -> None:
    header = sign_payload(payload, secrets=[fake_stripe.webhook_secret])
    response = await async_client.post("/billing/webhook", content=payload, headers={"Stripe-Signature": header})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_signature"


async def test_a_subscription_without_a_customer_is_nobodys(
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    """``stripe_customer_id == None`` is ``IS NULL`` in SQL: the old code put the first account without a Stripe
    customer on the plan."""
    sub = {"id": "sub_x", "status": "active", "items": {"data": [{"price": {"lookup_key": "professional"}}]}}
    event = {"id": "evt_nc", "object": "event", "type": "customer.subscription.created", "data": {"object": sub}}
    assert (await cg_stripe_webhooks.send(event)).json()["outcome"] == "unknown customer"
    assert await _subscriptions(cg_sessionmaker) == []


async def test_an_unknown_plan_with_a_long_name_is_still_answered(
    cg_funded_user: TestUser,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_stripe_webhooks: StripeWebhooks,
) -> None:
    """The outcome is stored in a 64-character column: a long plan name overflowed it (a 500 on Postgres)."""
    await set_customer(cg_sessionmaker, cg_funded_user, "cus_long")
    sub = {"id": "sub_l", "customer": "cus_long", "status": "active", "metadata": {"plan": "p" * 300}}
    event = {"id": "evt_long", "object": "event", "type": "customer.subscription.updated", "data": {"object": sub}}
    response = await cg_stripe_webhooks.send(event)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"].startswith("unknown plan 'ppp")
