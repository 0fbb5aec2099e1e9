"""Apply Stripe events to the ledger exactly once, whatever order and however often they arrive.

Every event is recorded in ``stripe_events`` (unique by event id) in the same transaction as its
effect, and every ledger row it writes has an idempotency key derived from the *payment* (the
Checkout Session), so two different events about one payment can never credit it twice.

Policies (documented in the README):
- ``checkout.session.completed`` / ``checkout.session.async_payment_succeeded`` with
  ``payment_status=paid`` → the credits promised at checkout, once per session.
- ``charge.refunded`` → take back credits in proportion to the refunded amount (cumulative
  ``amount_refunded``, so partial refunds in any order converge).
- ``charge.dispute.created`` → the disputed amount is taken back at once, like a refund; a won dispute
  is restored by an admin grant.
- Taking back never drives a balance below zero: if the credits were already spent, what can be
  collected now is, and the rest stays owed on the payment (``reversed_credits`` < target) and is
  collected by the next event about that payment. The ledger always balances.
- A refund or dispute that arrives before the completion is recorded on the payment and applied
  right after the credits land.
- Unknown event types are recorded and ignored (200).
"""

from __future__ import annotations

import json
import logging
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import Account, Payment, StripeEvent, utcnow
from creditgate.errors import InvalidSignature
from creditgate.ledger import service as ledger
from creditgate.money import from_hundredths
from creditgate.notifications.outbox import notify_account
from creditgate.quotas.service import load_plans, set_plan

log = logging.getLogger(__name__)


def verify(payload: bytes, signature: str | None, *, secret: str, tolerance: int = 300) -> dict[str, Any]:
    """Check ``Stripe-Signature`` with the SDK and return the event; ``InvalidSignature`` otherwise."""
    if not signature:
        raise InvalidSignature("missing Stripe-Signature header")
    # The SDK only bounds the past; an event signed for the far future would stay replayable for as long.
    stamps = [p.split("=", 1)[1] for p in signature.split(",") if p.startswith("t=")]
    if stamps and stamps[0].isdigit() and int(stamps[0]) > time.time() + tolerance:
        raise InvalidSignature("signature timestamp is in the future")
    try:
        stripe.Webhook.construct_event(payload, signature, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(f"signature verification failed: {exc.user_message or exc}") from exc
    except (ValueError, AttributeError, TypeError) as exc:  # the SDK fails on JSON that is not an object
        raise InvalidSignature("the payload is not a JSON event") from exc
    event = json.loads(payload)
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
        raise InvalidSignature("the payload is not a Stripe event")
    return event


async def apply_event(session: AsyncSession, event: dict[str, Any]) -> str:
    """Apply one verified event inside the caller's transaction; returns what happened."""
    if await session.get(StripeEvent, event["id"]) is not None:
        return "duplicate"
    obj = (event.get("data") or {}).get("object") or {}
    handler = _HANDLERS.get(str(event["type"]))
    outcome = await handler(session, obj) if handler else "ignored"
    record = StripeEvent(event_id=event["id"], type=str(event["type"])[:128], outcome=outcome)
    if outcome == WAITING:
        record.pending_payment_intent = str(obj["payment_intent"])
        record.payload = json.dumps(obj)
    session.add(record)
    await session.flush()
    return outcome


WAITING = "recorded; applied when the payment completes"


async def _checkout_completed(session: AsyncSession, obj: dict[str, Any]) -> str:
    if obj.get("payment_status") != "paid":
        return "not paid yet"
    payment = await session.scalar(select(Payment).where(Payment.checkout_session_id == obj.get("id")))
    if payment is None:
        payment = await _payment_from_metadata(session, obj)
        if payment is None:
            log.warning("checkout session %s is not ours; ignored", obj.get("id"))
            return "unknown session"
    if payment.payment_intent_id is None and obj.get("payment_intent"):
        payment.payment_intent_id = str(obj["payment_intent"])
    _, created = await ledger.post_entry(
        session,
        account_id=payment.account_id,
        amount=from_hundredths(payment.credits),
        type="purchase",
        idempotency_key=f"stripe:checkout:{payment.checkout_session_id}",
        description=f"Stripe checkout {payment.checkout_session_id}",
    )
    if not created:
        return "already credited"
    payment.status = "paid"
    payment.paid_at = utcnow()
    await notify_account(
        session,
        account_id=payment.account_id,
        type="payment_received",
        data={
            "credits": str(from_hundredths(payment.credits)),
            "amount_cents": payment.amount_cents,
            "checkout_session": payment.checkout_session_id,
        },
    )
    await _apply_waiting(session, payment)
    await _reconcile(session, payment)
    return "credited"


async def _apply_waiting(session: AsyncSession, payment: Payment) -> None:
    """Fold in refunds and disputes that arrived before this completion."""
    if payment.payment_intent_id is None:
        return
    waiting = await session.scalars(
        select(StripeEvent).where(StripeEvent.pending_payment_intent == payment.payment_intent_id)
    )
    for record in waiting:
        obj = json.loads(record.payload or "{}")
        if record.type == "charge.refunded":
            payment.refunded_cents = max(payment.refunded_cents, int(obj.get("amount_refunded") or 0))
        elif record.type == "charge.dispute.created":
            payment.disputed_cents = max(payment.disputed_cents, int(obj.get("amount") or 0))
        record.pending_payment_intent = None
        record.outcome = "applied at completion"


async def _payment_from_metadata(session: AsyncSession, obj: dict[str, Any]) -> Payment | None:
    """A session we have no record of (e.g. the DB write after checkout failed): trust our own metadata."""
    metadata = obj.get("metadata") or {}
    try:
        account_id, credits = int(metadata["account_id"]), Decimal(metadata["credits"])
        cents = int(obj["amount_total"])
    except (KeyError, ValueError, TypeError, ArithmeticError):
        return None
    if await session.get(Account, account_id) is None:
        return None
    payment = Payment(
        account_id=account_id,
        checkout_session_id=str(obj["id"]),
        amount_cents=cents,
        credits=int(credits * 100),
        status="pending",
        refunded_cents=0,
        disputed_cents=0,
        reversed_credits=0,
    )
    session.add(payment)
    await session.flush()
    return payment


async def _payment_for_charge(session: AsyncSession, obj: dict[str, Any]) -> Payment | None:
    intent = obj.get("payment_intent")
    if not intent:
        return None
    payment: Payment | None = await session.scalar(select(Payment).where(Payment.payment_intent_id == str(intent)))
    return payment


async def _charge_refunded(session: AsyncSession, obj: dict[str, Any]) -> str:
    payment = await _payment_for_charge(session, obj)
    if payment is None:
        # Perhaps its completion has not arrived yet: keep it, apply it when it does.
        return WAITING if obj.get("payment_intent") else "unknown charge"
    payment.refunded_cents = max(payment.refunded_cents, int(obj.get("amount_refunded") or 0))
    return await _reconcile(session, payment)


async def _dispute_created(session: AsyncSession, obj: dict[str, Any]) -> str:
    payment = await _payment_for_charge(session, obj)
    if payment is None:
        return WAITING if obj.get("payment_intent") else "unknown charge"
    payment.disputed_cents = max(payment.disputed_cents, int(obj.get("amount") or 0))
    return await _reconcile(session, payment)


async def _reconcile(session: AsyncSession, payment: Payment) -> str:
    """Take back what refunds and disputes say is owed, as far as the balance allows."""
    if payment.status == "pending":
        return WAITING
    taken_back_cents = min(payment.amount_cents, payment.refunded_cents + payment.disputed_cents)
    if taken_back_cents == 0:
        return "nothing to reverse"
    target = (Decimal(payment.credits) * taken_back_cents / payment.amount_cents).to_integral_value(ROUND_CEILING)
    owed = int(target) - payment.reversed_credits
    if payment.disputed_cents:
        payment.status = "disputed"
    elif taken_back_cents == payment.amount_cents:
        payment.status = "refunded"
    else:
        payment.status = "partially_refunded"
    if owed <= 0:
        return "already reversed"
    balance = await session.scalar(select(Account.balance).where(Account.id == payment.account_id).with_for_update())
    collectable = min(owed, int(balance or 0))
    if collectable:
        await ledger.post_entry(
            session,
            account_id=payment.account_id,
            amount=-from_hundredths(collectable),
            type="refund",
            idempotency_key=f"stripe:reversal:{payment.id}:{payment.reversed_credits}",
            description=f"reversal of Stripe payment {payment.checkout_session_id}",
        )
        payment.reversed_credits += collectable
        await notify_account(
            session,
            account_id=payment.account_id,
            type="refund",
            data={
                "credits": str(from_hundredths(collectable)),
                "checkout_session": payment.checkout_session_id,
                "status": payment.status,
            },
        )
    if collectable < owed:
        log.warning("payment %s: %s credits already spent, still owed", payment.id, from_hundredths(owed - collectable))
        return "partially reversed (credits already spent)"
    return "reversed"


async def _subscription_changed(session: AsyncSession, obj: dict[str, Any]) -> str:
    """customer.subscription.created/updated/deleted → the customer's plan (and so their call quota)."""
    account = await session.scalar(select(Account).where(Account.stripe_customer_id == obj.get("customer")))
    if account is None:
        return "unknown customer"
    subject = f"org:{account.org_id}" if account.org_id is not None else f"user:{account.user_id}"
    items = ((obj.get("items") or {}).get("data") or [{}])[0]
    plan = (obj.get("metadata") or {}).get("plan") or ((items.get("price") or {}).get("lookup_key"))
    plans = load_plans()
    if obj.get("status") not in {"active", "trialing", "past_due"} or obj.get("_deleted"):
        await set_plan(session, subject=subject, plan=None, plans=plans)
        return "subscription ended"
    if plan not in plans:
        return f"unknown plan {plan!r}"
    await set_plan(session, subject=subject, plan=plan, plans=plans, source="stripe", external_id=obj.get("id"))
    return f"plan {plan}"


async def _subscription_deleted(session: AsyncSession, obj: dict[str, Any]) -> str:
    return await _subscription_changed(session, {**obj, "_deleted": True})


_HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_completed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_deleted,
}
