"""The one FastAPI dependency that turns a bearer token into a ``Principal`` (401/403 rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.auth.oidc import looks_like_jwt
from creditgate.auth.service import Principal, authenticate_cached
from creditgate.errors import AuthenticationFailed, PermissionDenied
from creditgate.runtime import Runtime

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`creditgate create-key`, or from /auth/telegram/exchange) or, when an OIDC issuer "
    "is configured, an access token (JWT) from it.",
)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(rt: Annotated[Runtime, Depends(get_runtime)]) -> AsyncIterator[AsyncSession]:
    async with rt.sessionmaker() as session:
        yield session


async def get_principal(
    rt: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise AuthenticationFailed("missing API key: send Authorization: Bearer <key>")
    token = credentials.credentials
    if rt.oidc is not None and looks_like_jwt(token):
        async with rt.sessionmaker.begin() as session:  # may provision the user on first sign-in
            return await rt.oidc.principal(session, token)
    principal = await authenticate_cached(rt.caches, rt.sessionmaker, token)
    if principal is None:
        raise AuthenticationFailed("invalid API key")
    return principal


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("this route needs an admin key")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
