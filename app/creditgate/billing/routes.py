"""POST /billing/checkout, /billing/portal, /billing/webhook; GET /billing/payments."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.exc import IntegrityError

from creditgate.auth.deps import PrincipalDep, RuntimeDep, SessionDep
from creditgate.billing import service, webhooks
from creditgate.db.models import MAX_ID
from creditgate.errors import InvalidRequest, ServiceUnavailable
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.money import from_hundredths
from creditgate.observability import metrics
from creditgate.orgs import service as orgs
from creditgate.users.schemas import Credits

router = APIRouter(route_class=GuardedRoute, prefix="/billing", tags=["billing"])


class CheckoutRequest(BaseModel):
    amount_usd: Decimal = Field(description='dollars, whole cents, e.g. "10.00"', max_digits=12)
    org_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="top up this organization (its admins only)")

    @field_validator("amount_usd")
    @classmethod
    def _in_range(cls, value: Decimal) -> Decimal:
        service.calculate_credit_amount(value)  # ValueError → 422 with the reason
        return value


class CheckoutSession(BaseModel):
    id: str
    url: str
    credits: Credits


class PortalSession(BaseModel):
    url: str


class WebhookResult(BaseModel):
    received: bool = True
    outcome: str


class PaymentOut(BaseModel):
    id: int
    checkout_session_id: str
    amount_usd: str
    credits: Credits
    status: str
    refunded_usd: str
    reversed_credits: Credits
    created_at: datetime
    paid_at: datetime | None


class PaymentPage(BaseModel):
    data: list[PaymentOut]
    total: int
    limit: int
    offset: int


def _usd(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


@router.post("/checkout", response_model=CheckoutSession, responses=ERROR_RESPONSES(401, 403, 404, 422, 502, 503))
async def checkout(body: CheckoutRequest, principal: PrincipalDep, rt: RuntimeDep) -> CheckoutSession:
    """Start a Stripe Checkout for a top-up; credits arrive when Stripe confirms the payment."""
    rt_settings = rt.settings
    try:
        credits = service.calculate_credit_amount(body.amount_usd, settings=rt_settings)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="amount_usd") from exc
    account_id = principal.personal_account_id
    if body.org_id is not None:
        async with rt.sessionmaker() as session:
            await orgs.require_role(session, org_id=body.org_id, principal=principal, admin=True)
            account_id = await orgs.org_account_id(session, body.org_id)
    session_id, url = await service.create_checkout(
        rt.stripe,
        rt.sessionmaker,
        rt_settings,
        account_id=account_id,
        email=principal.email,
        usd=body.amount_usd,
    )
    return CheckoutSession(id=session_id, url=url, credits=credits)


@router.post("/portal", response_model=PortalSession, responses=ERROR_RESPONSES(401, 422, 502, 503))
async def portal(principal: PrincipalDep, rt: RuntimeDep) -> PortalSession:
    """A Stripe billing portal link for the caller."""
    url = await service.create_portal(
        rt.stripe, rt.sessionmaker, rt.settings, account_id=principal.personal_account_id, email=principal.email
    )
    return PortalSession(url=url)


@router.post(
    "/webhook",
    response_model=WebhookResult,
    responses={
        **ERROR_RESPONSES(503),
        400: {"model": ERROR_RESPONSES(422)[422]["model"], "description": "Bad signature"},
        422: {
            "model": ERROR_RESPONSES(422)[422]["model"],
            "description": "A signed event that is malformed (`malformed_event`) or does not add up "
            "(`payment_mismatch`); nothing is applied",
        },
    },
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}},
)
async def webhook(request: Request, rt: RuntimeDep) -> WebhookResult:
    """Stripe's signed events (raw body + Stripe-Signature); each applied once, in any order.

    A signed event that is malformed, or a payment that does not add up (amount, currency, customer), is a 422
    that credits nothing: Stripe retries it and the operator sees it in Stripe's log and ours."""
    rt_settings = rt.settings
    secret = rt_settings.stripe_webhook_secret
    if not secret:
        raise ServiceUnavailable("webhooks are not configured: set CREDITGATE_STRIPE_WEBHOOK_SECRET")
    event = webhooks.verify(await request.body(), request.headers.get("stripe-signature"), secret=secret)
    for attempt in range(3):
        try:
            async with rt.sessionmaker() as session, session.begin():
                session.info[webhooks.SETTINGS] = rt_settings  # the credit value prices what was paid
                outcome = await webhooks.apply_event(session, event)
            metrics.webhook("stripe", str(event["type"]), outcome)
            return WebhookResult(outcome=outcome)
        except IntegrityError:
            # The same event (or another about the same payment) committed first; re-read and replay.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@router.get("/payments", response_model=PaymentPage, responses=ERROR_RESPONSES(401, 422))
async def payments(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> PaymentPage:
    """The caller's top-ups, newest first."""
    rows, total = await service.list_payments(
        session, account_id=principal.personal_account_id, limit=limit, offset=offset
    )
    data = [
        PaymentOut(
            id=p.id,
            checkout_session_id=p.checkout_session_id,
            amount_usd=_usd(p.amount_cents),
            credits=from_hundredths(p.credits),
            status=p.status,
            refunded_usd=_usd(p.refunded_cents),
            reversed_credits=from_hundredths(p.reversed_credits),
            created_at=p.created_at,
            paid_at=p.paid_at,
        )
        for p in rows
    ]
    return PaymentPage(data=data, total=total, limit=limit, offset=offset)
