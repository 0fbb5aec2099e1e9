"""``Authorization: Bearer <JWT>`` from an OIDC issuer (Keycloak or any other), verified with PyJWT.

Discovery (``{issuer}/.well-known/openid-configuration``) gives the JWKS address; the key set is
cached for ``oidc_jwks_ttl_seconds`` and fetched again when a token names a key id it does not hold
(key rotation), at most once a second. RS256 and ES256 only; ``iss``, ``aud``, ``exp``, ``nbf``
checked with ``oidc_leeway_seconds`` of leeway; ``sub`` and ``exp`` required.

The user is found by ``(iss, sub)``, else linked by a verified ``email``, else created; a role in
``oidc_roles_claim`` equal to ``oidc_admin_role`` makes the caller an admin for that request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.auth.service import Principal, create_user, principal_for
from creditgate.db.models import Account, Identity, User
from creditgate.errors import AuthenticationFailed
from creditgate.settings import Settings

ALGORITHMS = ["RS256", "ES256"]
REFETCH_FLOOR_SECONDS = 1.0


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass
class OidcVerifier:
    settings: Settings
    http: httpx.AsyncClient
    _keys: dict[str, jwt.PyJWK] | None = None
    _fetched_at: float = float("-inf")
    _lock: asyncio.Lock | None = None

    @property
    def issuer(self) -> str:
        assert self.settings.oidc_issuer is not None
        return self.settings.oidc_issuer.rstrip("/")

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        try:
            discovery = (await self.http.get(f"{self.issuer}/.well-known/openid-configuration")).raise_for_status()
            config = discovery.json()
            if config.get("issuer", "").rstrip("/") != self.issuer:
                raise AuthenticationFailed("the OIDC discovery document names another issuer")
            jwks = (await self.http.get(config["jwks_uri"])).raise_for_status().json()
            key_set = jwt.PyJWKSet.from_dict(jwks)
        except (httpx.HTTPError, ValueError, KeyError, jwt.PyJWKSetError) as exc:
            raise AuthenticationFailed(f"cannot load the OIDC issuer's signing keys: {exc}") from exc
        return {key.key_id: key for key in key_set.keys if key.key_id}

    async def key(self, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``: from the cache, or after fetching the set again (rotation, expiry)."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            stale = self._keys is None or age > self.settings.oidc_jwks_ttl_seconds
            unknown = self._keys is not None and kid not in self._keys and age > REFETCH_FLOOR_SECONDS
            if stale or unknown:
                self._keys, self._fetched_at = await self._fetch(), time.monotonic()
            assert self._keys is not None
            if kid not in self._keys:
                raise AuthenticationFailed("the token is signed with a key the issuer does not publish")
            return self._keys[kid]

    async def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; ``AuthenticationFailed`` (401) with the reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthenticationFailed("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise AuthenticationFailed(f"token algorithm {header.get('alg')!r} is not accepted (RS256, ES256)")
        if not isinstance(header.get("kid"), str):
            raise AuthenticationFailed("the token names no signing key (kid)")
        key = await self.key(header["kid"])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.settings.oidc_audience,
                issuer=self.settings.oidc_issuer,
                leeway=self.settings.oidc_leeway_seconds,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthenticationFailed("token not yet valid (nbf/iat in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationFailed("token issued for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationFailed("token from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationFailed("token signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed(f"invalid token: {exc}") from exc
        return claims

    def is_admin(self, claims: dict[str, Any]) -> bool:
        value: Any = claims
        for part in self.settings.oidc_roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return isinstance(value, list) and self.settings.oidc_admin_role in value

    async def principal(self, session: AsyncSession, token: str) -> Principal:
        claims = await self.claims(token)
        user_id = await user_for_identity(
            session,
            issuer=self.issuer,
            subject=str(claims["sub"]),
            email=claims.get("email") if claims.get("email_verified", False) else None,
        )
        user = await session.get(User, user_id)
        account_id = await session.scalar(select(Account.id).where(Account.user_id == user_id))
        assert user is not None
        assert account_id is not None
        return await principal_for(
            session,
            user_id=user.id,
            email=user.email,
            is_admin=user.is_admin or self.is_admin(claims),
            personal_account_id=account_id,
        )


async def user_for_identity(session: AsyncSession, *, issuer: str, subject: str, email: str | None) -> int:
    """The user behind ``(issuer, subject)``: found, linked by ``email``, or created (no password, no key)."""
    for _ in range(2):  # a concurrent first sign-in may win the insert; then the lookup finds it
        found = await session.scalar(
            select(Identity.user_id).where(Identity.issuer == issuer, Identity.subject == subject)
        )
        if found is not None:
            return found
        try:
            async with session.begin_nested():
                user_id = await session.scalar(select(User.id).where(User.email == email)) if email else None
                if user_id is None:
                    host = issuer.split("://")[-1].split("/")[0]
                    user, _ = await create_user(session, email=email or f"{subject}@{host}")
                    user_id = user.id
                session.add(Identity(user_id=user_id, issuer=issuer, subject=subject))
                await session.flush()
            return user_id
        except IntegrityError:
            continue
    raise AuthenticationFailed("could not provision the user for this identity; try again")
