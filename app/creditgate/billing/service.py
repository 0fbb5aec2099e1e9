"""Checkout and portal sessions. Credits move only when Stripe's signed webhook says the money arrived."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import stripe
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.billing.stripe_client import require, translate
from creditgate.db.models import Account, Payment
from creditgate.money import to_hundredths, usd_to_credits
from creditgate.settings import Settings

CURRENCY = "usd"
"""The one currency the gateway sells credits in (Stripe's lowercase ISO code)."""


def calculate_credit_amount(usd: Decimal, *, settings: Settings | None = None) -> Decimal:
    """Credits for a top-up of ``usd`` dollars ($1 = 100 credits); ``ValueError`` outside the allowed range."""
    settings = settings or Settings(_env_file=None)
    try:
        usd = Decimal(usd)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError("amount must be a number of dollars") from exc
    if not usd.is_finite() or usd <= 0:
        raise ValueError("amount must be a positive number of dollars")
    if usd != usd.quantize(Decimal("0.01")):
        raise ValueError("amount must be whole cents")
    if usd < settings.min_topup_usd:
        raise ValueError(f"the smallest top-up is ${settings.min_topup_usd}")
    if usd > settings.max_topup_usd:
        raise ValueError(f"the largest top-up is ${settings.max_topup_usd}")
    return usd_to_credits(usd, credit_value_usd=settings.credit_value_usd)


async def _customer_id(
    client: stripe.StripeClient, sm: async_sessionmaker[AsyncSession], *, account_id: int, email: str
) -> str:
    async with sm() as session:
        existing = await session.scalar(select(Account.stripe_customer_id).where(Account.id == account_id))
    if existing:
        return existing
    customer = await client.v1.customers.create_async(
        params={"email": email, "metadata": {"account_id": str(account_id)}},
        options={"idempotency_key": f"creditgate-customer-{account_id}"},
    )
    async with sm() as session, session.begin():
        account = await session.get(Account, account_id)
        assert account is not None
        account.stripe_customer_id = customer.id
    return str(customer.id)


async def create_checkout(
    client: stripe.StripeClient | None,
    sm: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    account_id: int,
    email: str,
    usd: Decimal,
) -> tuple[str, str]:
    """A Stripe Checkout Session (mode=payment) for ``usd``; the pending payment is recorded. → (id, url)."""
    stripe_client = require(client)
    amount = calculate_credit_amount(usd, settings=settings)
    cents = int(usd * 100)
    metadata = {"account_id": str(account_id), "credits": str(amount)}
    try:
        customer = await _customer_id(stripe_client, sm, account_id=account_id, email=email)
        session = await stripe_client.v1.checkout.sessions.create_async(
            params={
                "mode": "payment",
                "customer": customer,
                "client_reference_id": str(account_id),
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": CURRENCY,
                            "unit_amount": cents,
                            "product_data": {"name": f"{amount} creditgate credits"},
                        },
                    }
                ],
                "metadata": metadata,
                "payment_intent_data": {"metadata": metadata},
                "success_url": settings.checkout_success_url,
                "cancel_url": settings.checkout_cancel_url,
            }
        )
    except stripe.StripeError as exc:
        raise translate(exc) from exc
    async with sm() as db, db.begin():
        db.add(
            Payment(
                account_id=account_id,
                checkout_session_id=session.id,
                amount_cents=cents,
                credits=to_hundredths(amount),
                status="pending",
            )
        )
    return str(session.id), str(session.url)


async def create_portal(
    client: stripe.StripeClient | None,
    sm: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    account_id: int,
    email: str,
) -> str:
    stripe_client = require(client)
    try:
        customer = await _customer_id(stripe_client, sm, account_id=account_id, email=email)
        portal = await stripe_client.v1.billing_portal.sessions.create_async(
            params={"customer": customer, "return_url": settings.portal_return_url}
        )
    except stripe.StripeError as exc:
        raise translate(exc) from exc
    return str(portal.url)


async def list_payments(
    session: AsyncSession, *, account_id: int, limit: int, offset: int
) -> tuple[list[Payment], int]:
    rows = await session.scalars(
        select(Payment)
        .where(Payment.account_id == account_id)
        .order_by(Payment.created_at.desc(), Payment.id.desc())
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(select(func.count()).select_from(Payment).where(Payment.account_id == account_id))
    return list(rows), int(total or 0)
