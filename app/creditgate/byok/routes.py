"""POST/GET/DELETE /user/provider-keys: the caller's own provider keys (never returned in full)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.byok import service
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute

router = APIRouter(
    route_class=GuardedRoute, prefix="/user/provider-keys", tags=["byok"], responses=ERROR_RESPONSES(401, 503)
)


class ProviderKeyIn(BaseModel):
    provider: str = Field(min_length=1, max_length=64)
    # Printable ASCII: a key is sent in an HTTP header, which carries nothing else.
    api_key: str = Field(min_length=8, max_length=512, pattern=r"^[\x20-\x7e]+$", repr=False)


class ProviderKeyOut(BaseModel):
    provider: str
    last4: str
    created_at: datetime


class ProviderKeyList(BaseModel):
    data: list[ProviderKeyOut]


@router.post("", response_model=ProviderKeyOut, responses=ERROR_RESPONSES(422))
async def store_key(body: ProviderKeyIn, principal: PrincipalDep, rt: RuntimeDep) -> ProviderKeyOut:
    """Store (or replace) your key for a provider; requests it serves then cost 0 credits."""
    async with rt.sessionmaker() as session, session.begin():
        row = await service.store(
            session,
            user_id=principal.user_id,
            provider=body.provider,
            key=body.api_key,
            settings=rt.settings,
            catalog=rt.catalog,
        )
        return ProviderKeyOut(provider=row.provider, last4=row.last4, created_at=row.created_at)


@router.get("", response_model=ProviderKeyList)
async def list_keys(principal: PrincipalDep, rt: RuntimeDep) -> ProviderKeyList:
    """Your stored keys: provider and last four characters only."""
    async with rt.sessionmaker() as session:
        rows = await service.listed(session, user_id=principal.user_id)
    return ProviderKeyList(
        data=[ProviderKeyOut(provider=r.provider, last4=r.last4, created_at=r.created_at) for r in rows]
    )


@router.delete("/{provider}", status_code=204, responses=ERROR_RESPONSES(404))
async def delete_key(provider: str, principal: PrincipalDep, rt: RuntimeDep) -> Response:
    """Forget your key for a provider."""
    async with rt.sessionmaker() as session, session.begin():
        await service.remove(session, user_id=principal.user_id, provider=provider)
    return Response(status_code=204)
