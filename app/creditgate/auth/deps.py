"""The one FastAPI dependency that turns an API key into a ``Principal`` (401/403 rules).

The key comes as ``Authorization: Bearer <key>`` (OpenAI's convention) or ``x-api-key: <key>``
(Anthropic's); Bearer wins when both are sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
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
_x_api_key = APIKeyHeader(
    name="x-api-key", auto_error=False, description="The same API key, the way Anthropic's clients send it."
)


async def get_runtime(request: Request) -> Runtime:
    """The app's ``Runtime``; ``async``, so FastAPI calls it inline, not in its thread pool (a thread hop each)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(rt: Annotated[Runtime, Depends(get_runtime)]) -> AsyncIterator[AsyncSession]:
    async with rt.sessionmaker() as session:
        yield session


async def get_principal(
    rt: Annotated[Runtime, Depends(get_runtime)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_x_api_key)],
) -> Principal:
    token = credentials.credentials if credentials is not None else api_key
    if not token:
        raise AuthenticationFailed(
            "missing API key: send Authorization: Bearer <key> or x-api-key: <key>", code="missing_api_key"
        )
    if rt.oidc is not None and looks_like_jwt(token):
        async with rt.sessionmaker.begin() as session:  # may provision the user on first sign-in
            return await rt.oidc.principal(session, token)
    principal = await authenticate_cached(rt.caches, rt.sessionmaker, token)
    if principal is None:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    return principal


async def principal_of(request: Request) -> Principal:
    """``get_principal`` for a request, without dependency solving (the inference routes' ``LeanRoute``)."""
    return await get_principal(request.app.state.runtime, await _bearer(request), await _x_api_key(request))


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("this route needs an admin key")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
