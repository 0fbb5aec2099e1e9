"""Admin routes: credit grants, the credit increment (audited), subscriptions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from creditgate.auth import service as auth
from creditgate.auth.deps import AdminDep, RuntimeDep
from creditgate.cache import changed
from creditgate.catalog import pricing
from creditgate.db.models import MAX_ID, AdminAudit, AppSetting, utcnow
from creditgate.errors import InvalidRequest, NotFound
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.ledger import service as ledger
from creditgate.money import ALLOWED_INCREMENTS, check_increment, credits, from_hundredths
from creditgate.orgs import service as orgs
from creditgate.quotas.service import set_plan
from creditgate.users.schemas import Credits

router = APIRouter(prefix="/admin", tags=["admin"], responses=ERROR_RESPONSES(401, 403))


class CreditGrant(BaseModel):
    email: str | None = Field(default=None, min_length=3, max_length=320, description="a user's account, or…")
    org_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="…an organization's account")
    amount: Decimal = Field(description="credits, two decimals at most; negative only for adjustment")
    type: Literal["bonus", "adjustment"] = "bonus"
    idempotency_key: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=500)

    @field_validator("amount")
    @classmethod
    def _two_places(cls, value: Decimal) -> Decimal:
        if abs(value) > Decimal("1e12"):
            raise ValueError("amount is too large")
        return credits(value)

    @model_validator(mode="after")
    def _one_target(self) -> CreditGrant:
        if (self.email is None) == (self.org_id is None):
            raise ValueError("give exactly one of email or org_id")
        return self


class CreditGrantResult(BaseModel):
    entry_id: int
    balance_after: Credits
    replayed: bool


@router.post("/credits", response_model=CreditGrantResult, responses=ERROR_RESPONSES(402, 404, 409, 422))
async def grant_credits(body: CreditGrant, _: AdminDep, rt: RuntimeDep) -> CreditGrantResult:
    """Post a bonus or adjustment to a user's account; a repeated idempotency key replays the result."""
    try:
        return await _grant(rt, body)
    except IntegrityError:
        # A concurrent request with the same key won the unique constraint; replay its result.
        return await _grant(rt, body)


async def _grant(rt: RuntimeDep, body: CreditGrant) -> CreditGrantResult:
    async with rt.sessionmaker() as session, session.begin():
        if body.org_id is not None:
            account_id = await orgs.org_account_id(session, body.org_id)
        else:
            user = await auth.find_user(session, email=str(body.email))
            if user is None:
                raise NotFound(f"no user with email {body.email!r}")
            account_id = await auth.account_id_of(session, user_id=user.id)
        entry, created = await ledger.post_entry(
            session,
            account_id=account_id,
            amount=body.amount,
            type=body.type,
            idempotency_key=f"admin:{body.idempotency_key}",
            description=body.description,
        )
        return CreditGrantResult(
            entry_id=entry.id, balance_after=from_hundredths(entry.balance_after), replayed=not created
        )


class IncrementOut(BaseModel):
    increment: str = Field(description="the minimum credit increment every charge is rounded up to")
    allowed: list[str]


class IncrementIn(BaseModel):
    increment: Decimal


class AuditEntry(BaseModel):
    id: int
    actor_user_id: int
    key: str
    old_value: str | None
    new_value: str
    created_at: datetime


class AuditPage(BaseModel):
    data: list[AuditEntry]


class SubscriptionIn(BaseModel):
    email: str | None = Field(default=None, min_length=3, max_length=320)
    org_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    plan: str | None = Field(description="a plan name, or null to return to the default plan", max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionIn:
        if (self.email is None) == (self.org_id is None):
            raise ValueError("give exactly one of email or org_id")
        return self


class SubscriptionOut(BaseModel):
    subject: str
    plan: str
    monthly_calls: int | None


_ALLOWED = [str(i) for i in ALLOWED_INCREMENTS]


@router.get("/settings/credit-increment", response_model=IncrementOut)
async def get_increment(_: AdminDep, rt: RuntimeDep) -> IncrementOut:
    """The current minimum credit increment."""
    async with rt.sessionmaker() as session:
        value = await pricing.current_increment(session, default=rt.settings.default_credit_increment)
    return IncrementOut(increment=str(value), allowed=_ALLOWED)


@router.put("/settings/credit-increment", response_model=IncrementOut, responses=ERROR_RESPONSES(422))
async def put_increment(body: IncrementIn, admin: AdminDep, rt: RuntimeDep) -> IncrementOut:
    """Change the increment (0.01, 0.1 or 1.0); every worker uses it from the next request; audited."""
    try:
        value = check_increment(body.increment)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="increment", allowed=_ALLOWED) from exc
    async with rt.sessionmaker() as session, session.begin():
        row = await session.get(AppSetting, pricing.INCREMENT_KEY)
        old = row.value if row is not None else None
        if row is None:
            session.add(AppSetting(key=pricing.INCREMENT_KEY, value=str(value)))
        else:
            row.value, row.updated_at = str(value), utcnow()
        session.add(
            AdminAudit(actor_user_id=admin.user_id, key=pricing.INCREMENT_KEY, old_value=old, new_value=str(value))
        )
        await changed(session, "increment")
    return IncrementOut(increment=str(value), allowed=_ALLOWED)


@router.get("/audit", response_model=AuditPage)
async def audit(_: AdminDep, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> AuditPage:
    """Admin changes to runtime settings, newest first: who, old, new, when."""
    async with rt.sessionmaker() as session:
        rows = await session.scalars(select(AdminAudit).order_by(AdminAudit.id.desc()).limit(limit))
        return AuditPage(
            data=[
                AuditEntry(
                    id=r.id,
                    actor_user_id=r.actor_user_id,
                    key=r.key,
                    old_value=r.old_value,
                    new_value=r.new_value,
                    created_at=r.created_at,
                )
                for r in rows
            ]
        )


@router.put("/subscriptions", response_model=SubscriptionOut, responses=ERROR_RESPONSES(404, 422))
async def put_subscription(body: SubscriptionIn, _: AdminDep, rt: RuntimeDep) -> SubscriptionOut:
    """Put a user or an org on a plan (its monthly call quota)."""
    async with rt.sessionmaker() as session, session.begin():
        if body.org_id is not None:
            await orgs.org_account_id(session, body.org_id)  # 404 if missing
            subject = f"org:{body.org_id}"
        else:
            user = await auth.find_user(session, email=str(body.email))
            if user is None:
                raise NotFound(f"no user with email {body.email!r}")
            subject = f"user:{user.id}"
        await set_plan(session, subject=subject, plan=body.plan, plans=rt.quotas.plans)
        plan = await rt.quotas.plan_of(session, subject)
    return SubscriptionOut(subject=subject, plan=plan, monthly_calls=rt.quotas.plans[plan])
