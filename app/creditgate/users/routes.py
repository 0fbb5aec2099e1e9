"""GET /user/balance, /user/transactions, /user/transactions/summary."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from creditgate.auth.deps import PrincipalDep, SessionDep
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.ledger import repository
from creditgate.ledger import service as ledger
from creditgate.llm import usage_repository
from creditgate.money import from_hundredths
from creditgate.users.schemas import (
    Balance,
    IsoDateTime,
    Transaction,
    TransactionPage,
    TransactionSummary,
    UsageOut,
    UsagePage,
)

router = APIRouter(route_class=GuardedRoute, prefix="/user", tags=["user"], responses=ERROR_RESPONSES(401))

EntryType = Literal["purchase", "bonus", "adjustment", "refund", "hold", "release", "api_usage"]


@router.get("/balance", response_model=Balance)
async def balance(principal: PrincipalDep, session: SessionDep) -> Balance:
    """Your own balance and what open holds reserve (an org member spends the org's: see GET /orgs/{id})."""
    return Balance(
        balance=await ledger.balance_of(session, principal.personal_account_id),
        held=await ledger.held_amount(session, principal.personal_account_id),
    )


@router.get("/transactions", response_model=TransactionPage, responses=ERROR_RESPONSES(422))
async def transactions(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    type: Annotated[EntryType | None, Query(description="only entries of this type")] = None,
    start: Annotated[IsoDateTime | None, Query(description="inclusive, ISO 8601 (UTC if no zone)")] = None,
    end: Annotated[IsoDateTime | None, Query(description="exclusive, ISO 8601 (UTC if no zone)")] = None,
) -> TransactionPage:
    """Ledger entries, newest first."""
    rows, total = await repository.page(
        session, principal.personal_account_id, limit=limit, offset=offset, type_=type, start=start, end=end
    )
    data = [
        Transaction(
            id=r.id,
            type=r.type,
            amount=from_hundredths(r.amount),
            balance_after=from_hundredths(r.balance_after),
            description=r.description,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return TransactionPage(data=data, total=total, limit=limit, offset=offset)


@router.get("/transactions/summary", response_model=TransactionSummary, responses=ERROR_RESPONSES(422))
async def transactions_summary(
    principal: PrincipalDep,
    session: SessionDep,
    start: Annotated[IsoDateTime | None, Query()] = None,
    end: Annotated[IsoDateTime | None, Query()] = None,
) -> TransactionSummary:
    """Totals for a period; over all time ``net_balance`` equals the balance."""
    s = await repository.summary(session, principal.personal_account_id, start=start, end=end)
    return TransactionSummary(
        total_spent=s.total_spent,
        total_purchased=s.total_purchased,
        total_bonus=s.total_bonus,
        total_refunded=s.total_refunded,
        net_balance=s.net_balance,
        start=start,
        end=end,
    )


@router.get("/usage", response_model=UsagePage, responses=ERROR_RESPONSES(422))
async def usage(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    start: Annotated[IsoDateTime | None, Query(description="inclusive, ISO 8601")] = None,
    end: Annotated[IsoDateTime | None, Query(description="exclusive, ISO 8601")] = None,
) -> UsagePage:
    """Every request you made (model, provider, tokens, credits, latency, BYOK, outcome), newest first."""
    rows, total = await usage_repository.page(
        session, user_id=principal.user_id, limit=limit, offset=offset, start=start, end=end
    )
    data = [
        UsageOut(
            request_id=r.request_id,
            model=r.model,
            provider=r.provider,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            credits=from_hundredths(r.credits),
            latency_ms=r.latency_ms,
            outcome=r.outcome,
            byok=r.byok,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return UsagePage(data=data, total=total, limit=limit, offset=offset)
