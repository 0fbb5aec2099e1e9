"""POST /admin/credits: grant (bonus) or adjust an account's credits, idempotently."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy.exc import IntegrityError

from app.auth import service as auth
from app.auth.deps import AdminDep, RuntimeDep
from app.errors import NotFound
from app.errors_http import ERROR_RESPONSES
from app.ledger import service as ledger
from app.money import credits, from_hundredths
from app.orgs import service as orgs
from app.users.schemas import Credits

router = APIRouter(prefix="/admin", tags=["admin"], responses=ERROR_RESPONSES(401, 403))


class CreditGrant(BaseModel):
    email: str | None = Field(default=None, min_length=3, max_length=320, description="a user's account, or…")
    org_id: int | None = Field(default=None, ge=1, description="…an organization's account")
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
