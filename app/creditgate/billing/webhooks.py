"""Apply Stripe events to the ledger exactly once, whatever order and however often they arrive.

Every event is recorded in ``stripe_events`` (unique by event id) in the same transaction as its
effect, and every ledger row it writes has an idempotency key derived from the *payment* (the
Checkout Session), so two different events about one payment can never credit it twice.

Policies (documented in docs/top-ups.md):
- ``checkout.session.completed`` / ``checkout.session.async_payment_succeeded`` with
  ``payment_status=paid`` → the credits promised at checkout, once per session, when the session adds up:
  its ``amount_total`` is what the checkout was opened for, in USD, paid by the account's own Stripe customer,
  and its metadata agrees. A session the gateway has no record of (it failed to record it after opening it)
  is credited what its ``amount_total`` buys at the credit value, never what its metadata claims. A session
  that does not add up is refused (422 ``payment_mismatch``, logged) and credits nothing.
- A signed event that is not what Stripe sends (a field of the wrong type, ``"NaN"`` credits, a 100k id) is
  refused (422 ``malformed_event``, naming the field) and applies nothing; Stripe retries it, the operator sees it.
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
import re
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.billing.service import CURRENCY, calculate_credit_amount
from creditgate.db.models import MAX_ID, Account, Payment, StripeEvent, utcnow
from creditgate.errors import InvalidRequest, InvalidSignature
from creditgate.ledger import service as ledger
from creditgate.money import from_hundredths, to_hundredths
from creditgate.notifications.outbox import notify_account
from creditgate.quotas.service import load_plans, set_plan
from creditgate.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = "creditgate.billing.settings"
"""``session.info`` key: the runtime's settings (the credit value) for the events applied in that transaction."""

# Stripe-Signature: ``t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]``, exactly as Stripe writes it.
_HEADER_ITEM = re.compile(r"([a-z][a-z0-9]*)=([A-Za-z0-9]+)", re.ASCII)
_STAMP = re.compile(r"[1-9][0-9]{0,11}", re.ASCII)
# What Stripe's ids, types and our own metadata look like; anything else in those places is not Stripe's.
_ID = re.compile(r"[!-~]{1,255}", re.ASCII)  # printable ASCII: no spaces, no NUL, fits the columns
_TYPE = re.compile(r"[a-z0-9_.]{1,128}", re.ASCII)
_ACCOUNT_ID = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
_CREDITS = re.compile(r"[0-9]{1,15}(\.[0-9]{1,2})?", re.ASCII)
MAX_CENTS = 10**12  # far above any amount Stripe charges, far below what a BigInteger holds


def verify(payload: bytes, signature: str | None, *, secret: str, tolerance: int = 300) -> dict[str, Any]:
    """Check ``Stripe-Signature`` and return the event; ``InvalidSignature`` (400) otherwise.

    The header is read strictly — one ``t=`` of plain ASCII digits (what Python's ``int()`` would also accept,
    ``+``, spaces, ``_``, other scripts' digits, is refused), within ``tolerance`` seconds of now in *both*
    directions, and at least one ``v1`` — and then the SDK checks the HMAC. The payload must be strict JSON (no
    ``NaN``) shaped like an event: id, type and ``data.object`` of Stripe's types, else a 422 ``malformed_event``.
    """
    if not signature:
        raise InvalidSignature("missing Stripe-Signature header")
    stamp = _signature_stamp(signature)
    # The SDK only bounds the past; an event signed for the far future would stay replayable for as long.
    if stamp > time.time() + tolerance:
        raise InvalidSignature("signature timestamp is in the future")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature(f"signature verification failed: {exc.user_message or exc}") from exc
    except ValueError as exc:  # the payload is not UTF-8
        raise InvalidSignature("the payload is not a JSON event") from exc
    try:
        event = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # not JSON, NaN/Infinity, digits beyond int(), nested too deep
        raise InvalidSignature("the payload is not a JSON event") from exc
    if not isinstance(event, dict):
        raise InvalidSignature("the payload is not a JSON event")
    if not isinstance(event.get("id"), str) or "type" not in event:
        raise InvalidSignature("the payload is not a Stripe event")
    _check_envelope(event)
    return event


def _signature_stamp(signature: str) -> int:
    """The one ``t=`` of a well-formed header; ``InvalidSignature`` for any other form."""
    items = [_HEADER_ITEM.fullmatch(item) for item in signature.split(",")]
    if not all(items):
        raise InvalidSignature("signature verification failed: the Stripe-Signature header is malformed")
    pairs = [(m.group(1), m.group(2)) for m in items if m]
    stamps = [value for key, value in pairs if key == "t"]
    if len(stamps) != 1 or not _STAMP.fullmatch(stamps[0]):
        raise InvalidSignature("signature verification failed: the header needs exactly one t=<unix seconds>")
    if not any(key == "v1" for key, _ in pairs):
        raise InvalidSignature("signature verification failed: No signatures found with expected scheme v1")
    return int(stamps[0])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _malformed(param: str, why: str) -> InvalidRequest:
    """A signed event that is not what Stripe sends: refused (422), so Stripe retries and the operator sees it."""
    log.warning("malformed Stripe event: %s %s", param, why)
    return InvalidRequest(f"malformed event: {param} {why}", code="malformed_event", param=param)


def _mismatch(session_id: str, why: str) -> InvalidRequest:
    """A completed payment that does not add up: refused (422) and logged; nothing is credited."""
    log.warning("checkout session %s refused, nothing credited: %s", session_id, why)
    return InvalidRequest(f"checkout session {session_id} refused: {why}", code="payment_mismatch")


def _check_envelope(event: dict[str, Any]) -> None:
    if not isinstance(event.get("id"), str) or not _ID.fullmatch(event["id"]):
        raise _malformed("id", "must be a Stripe id (1-255 printable ASCII characters)")
    if not isinstance(event.get("type"), str) or not _TYPE.fullmatch(event["type"]):
        raise _malformed("type", "must be a Stripe event type")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise _malformed("data.object", "must be an object")


class _Fields:
    """One Stripe object's fields, read as the types Stripe documents (``None`` when absent or null).

    Anything else — a number where an id goes, ``"NaN"`` or ``1e30`` where cents go, a list where an object
    goes — is a 422 ``malformed_event`` naming the field."""

    def __init__(self, raw: Any, path: str = "data.object") -> None:
        if not isinstance(raw, dict):
            raise _malformed(path, "must be an object")
        self.raw, self.path = raw, path

    def _get(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.raw.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise _malformed(f"{self.path}.{key}", f"must be {what}")
        return value

    def id(self, key: str) -> str | None:
        value: str | None = self._get(key, str, "a Stripe id")
        if value is not None and not _ID.fullmatch(value):
            raise _malformed(f"{self.path}.{key}", "must be a Stripe id (1-255 printable ASCII characters)")
        return value

    def text(self, key: str, *, max_len: int = 255) -> str | None:
        value: str | None = self._get(key, str, "a string")
        if value is not None and (len(value) > max_len or "\x00" in value):
            raise _malformed(f"{self.path}.{key}", f"must be a string of at most {max_len} characters")
        return value

    def cents(self, key: str) -> int | None:
        value: int | None = self._get(key, int, "an integer amount in cents")
        if value is not None and not 0 <= value <= MAX_CENTS:
            raise _malformed(f"{self.path}.{key}", f"must be between 0 and {MAX_CENTS} cents")
        return value

    def child(self, key: str) -> _Fields:
        value = self.raw.get(key)
        return _Fields({} if value is None else value, f"{self.path}.{key}")

    def metadata(self) -> dict[str, str]:
        """Stripe's metadata: string keys to strings of at most 500 characters."""
        value = self.raw.get("metadata")
        value = {} if value is None else value
        if not isinstance(value, dict) or not all(
            isinstance(v, str) and len(v) <= 500 and "\x00" not in v for v in value.values()
        ):
            raise _malformed(f"{self.path}.metadata", "must map keys to strings of at most 500 characters")
        return value


def _settings(session: AsyncSession) -> Settings:
    settings = session.info.get(SETTINGS)
    return settings if isinstance(settings, Settings) else Settings(_env_file=None)


async def apply_event(session: AsyncSession, event: dict[str, Any]) -> str:
    """Apply one verified event inside the caller's transaction; returns what happened.

    Put the runtime's settings in ``session.info[SETTINGS]`` (the credit value that prices a payment the gateway
    has no record of); the defaults are used otherwise."""
    _check_envelope(event)
    if await session.get(StripeEvent, event["id"]) is not None:
        return "duplicate"
    obj = event["data"]["object"]
    handler = _HANDLERS.get(event["type"])
    outcome = await handler(session, obj) if handler else "ignored"
    record = StripeEvent(event_id=event["id"], type=event["type"], outcome=outcome[:64])
    if outcome == WAITING:
        fields = _Fields(obj)
        amounts = {key: fields.cents(key) for key in ("amount_refunded", "amount")}
        record.pending_payment_intent = fields.id("payment_intent")
        record.payload = json.dumps({"payment_intent": record.pending_payment_intent, **amounts})
    session.add(record)
    await session.flush()
    return outcome


WAITING = "recorded; applied when the payment completes"


async def _checkout_completed(session: AsyncSession, obj: dict[str, Any]) -> str:
    fields = _Fields(obj)
    session_id = fields.id("id")
    if session_id is None:
        raise _malformed("data.object.id", "is required")
    paid = fields.text("payment_status")
    cents, currency = fields.cents("amount_total"), fields.text("currency")
    customer, intent = fields.id("customer"), fields.id("payment_intent")
    reference, metadata = fields.text("client_reference_id"), fields.metadata()
    if paid != "paid":
        return "not paid yet"
    payment = await session.scalar(select(Payment).where(Payment.checkout_session_id == session_id))
    if payment is None:
        account = await _claimed_account(session, metadata)
        if account is None:
            log.warning("checkout session %s is not ours; ignored", session_id)
            return "unknown session"
        amount_cents, price = _priced(session_id, cents, currency, settings=_settings(session))
        payment = Payment(
            account_id=account.id,
            checkout_session_id=session_id,
            amount_cents=amount_cents,
            credits=to_hundredths(price),
            status="pending",
            refunded_cents=0,
            disputed_cents=0,
            reversed_credits=0,
        )
    else:
        account = await session.get(Account, payment.account_id)
        assert account is not None  # payments.account_id is a foreign key
        if cents != payment.amount_cents:
            raise _mismatch(session_id, f"amount_total {cents} is not the {payment.amount_cents} cents it opened for")
        if currency != CURRENCY:
            raise _mismatch(session_id, f"currency {currency!r} is not {CURRENCY!r}")
    _check_belongs(session_id, account, customer=customer, reference=reference, metadata=metadata, payment=payment)
    if intent is not None and payment.payment_intent_id not in (None, intent):
        raise _mismatch(session_id, f"payment_intent {intent} is not the recorded {payment.payment_intent_id}")
    if intent is not None and payment.payment_intent_id is None:
        other = await session.scalar(select(Payment.id).where(Payment.payment_intent_id == intent))
        if other is not None and other != payment.id:
            raise _mismatch(session_id, f"payment_intent {intent} already belongs to another payment")
        payment.payment_intent_id = intent
    if payment.id is None:
        session.add(payment)
        await session.flush()
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


async def _claimed_account(session: AsyncSession, metadata: dict[str, str]) -> Account | None:
    """The account our own metadata names (``str(account.id)``, as the gateway writes it); ``None``: not ours."""
    claimed = metadata.get("account_id")
    if claimed is None or not _ACCOUNT_ID.fullmatch(claimed) or int(claimed) > MAX_ID:
        return None
    return await session.get(Account, int(claimed))


def _priced(session_id: str, cents: int | None, currency: str | None, *, settings: Settings) -> tuple[int, Decimal]:
    """A session we have no record of (e.g. the DB write after checkout failed) is priced by what was paid:
    (cents, the credits they buy at the credit value), for a top-up the gateway sells."""
    if currency != CURRENCY:
        raise _mismatch(session_id, f"currency {currency!r} is not {CURRENCY!r}")
    if cents is None:
        raise _mismatch(session_id, "it has no amount_total")
    try:
        return cents, calculate_credit_amount(Decimal(cents) / 100, settings=settings)
    except ValueError as exc:
        raise _mismatch(session_id, f"amount_total {cents}: {exc}") from exc


def _check_belongs(
    session_id: str,
    account: Account,
    *,
    customer: str | None,
    reference: str | None,
    metadata: dict[str, str],
    payment: Payment,
) -> None:
    """The session is the account's: its Stripe customer paid, and what it says about itself agrees with the payment."""
    if account.stripe_customer_id is None or customer != account.stripe_customer_id:
        raise _mismatch(session_id, f"customer {customer!r} is not account {account.id}'s")
    if reference is not None and reference != str(account.id):
        raise _mismatch(session_id, f"client_reference_id {reference!r} is not account {account.id}")
    if "account_id" in metadata and metadata["account_id"] != str(account.id):
        raise _mismatch(session_id, f"metadata.account_id {metadata['account_id']!r} is not account {account.id}")
    promised = metadata.get("credits")
    if promised is not None and not _CREDITS.fullmatch(promised):
        raise _malformed("data.object.metadata.credits", "must be a number of credits such as '100.00'")
    paid_for = from_hundredths(payment.credits)
    if promised is not None and Decimal(promised) != paid_for:
        raise _mismatch(session_id, f"metadata.credits {promised!r} is not the {paid_for} paid for")
    if "account_id" in metadata and promised is None:
        raise _mismatch(session_id, "metadata.credits is missing")


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


async def _payment_for_charge(session: AsyncSession, intent: str | None) -> Payment | None:
    if intent is None:
        return None
    payment: Payment | None = await session.scalar(select(Payment).where(Payment.payment_intent_id == intent))
    return payment


async def _charge_refunded(session: AsyncSession, obj: dict[str, Any]) -> str:
    fields = _Fields(obj)
    intent, refunded = fields.id("payment_intent"), fields.cents("amount_refunded")
    payment = await _payment_for_charge(session, intent)
    if payment is None:
        # Perhaps its completion has not arrived yet: keep it, apply it when it does.
        return WAITING if intent else "unknown charge"
    payment.refunded_cents = max(payment.refunded_cents, refunded or 0)
    return await _reconcile(session, payment)


async def _dispute_created(session: AsyncSession, obj: dict[str, Any]) -> str:
    fields = _Fields(obj)
    intent, disputed = fields.id("payment_intent"), fields.cents("amount")
    payment = await _payment_for_charge(session, intent)
    if payment is None:
        return WAITING if intent else "unknown charge"
    payment.disputed_cents = max(payment.disputed_cents, disputed or 0)
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
    fields = _Fields(obj)
    customer, status, external_id = fields.id("customer"), fields.text("status"), fields.id("id")
    metadata = fields.metadata()
    items = fields.child("items").raw.get("data")
    items = [{}] if items is None or items == [] else items
    if not isinstance(items, list):
        raise _malformed("data.object.items.data", "must be a list")
    lookup_key = _Fields(items[0], "data.object.items.data[0]").child("price").text("lookup_key")
    if customer is None:  # no customer is nobody's (and not every account without one)
        return "unknown customer"
    account = await session.scalar(select(Account).where(Account.stripe_customer_id == customer))
    if account is None:
        return "unknown customer"
    subject = f"org:{account.org_id}" if account.org_id is not None else f"user:{account.user_id}"
    plan = metadata.get("plan") or lookup_key
    plans = load_plans()
    if status not in {"active", "trialing", "past_due"} or obj.get("_deleted"):
        await set_plan(session, subject=subject, plan=None, plans=plans)
        return "subscription ended"
    if plan not in plans:
        return f"unknown plan {plan and plan[:40]!r}"
    await set_plan(session, subject=subject, plan=plan, plans=plans, source="stripe", external_id=external_id)
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
