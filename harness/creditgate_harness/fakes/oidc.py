"""A fake OIDC issuer with Keycloak's paths, and helpers to mint good and bad tokens.

Served on a real port (``fake_oidc`` fixture), it answers::

    /realms/{realm}/.well-known/openid-configuration
    /realms/{realm}/protocol/openid-connect/certs            (the JWKS)
    /realms/{realm}/protocol/openid-connect/token            (password and client_credentials grants)

``rotate()`` adds a new signing key (old tokens keep verifying while their key is published);
``retire(kid)`` removes one. ``mint(...)`` signs any claims: expired, wrong audience, another key, ES256.

Keys and tokens need the ``oidc`` extra (``pip install "creditgate-harness[oidc]"``: PyJWT, cryptography); this
module is imported only when a test uses the fake (``fake_oidc``, ``FakeOidcIssuer``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

try:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the suites run
    raise ImportError(
        f"the fake OIDC issuer needs PyJWT and cryptography ({exc}): pip install 'creditgate-harness[oidc]'"
    ) from exc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    @classmethod
    def new(cls, alg: str = "RS256") -> SigningKey:
        private: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )
        return cls(uuid.uuid4().hex[:12], alg, private)

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}


@dataclass
class TestAccount:
    __test__ = False
    username: str
    password: str
    sub: str = field(default_factory=lambda: str(uuid.uuid4()))
    email: str | None = None
    roles: tuple[str, ...] = ()


@dataclass
class FakeOidcIssuer:
    """The issuer's state. ``base_url`` is set when it is served (``http://127.0.0.1:N``)."""

    realm: str = "creditgate"
    client_id: str = "creditgate-api"
    client_secret: str = "test-client-secret"  # noqa: S105 - a fake's secret
    base_url: str = "http://127.0.0.1"
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.new()])
    accounts: dict[str, TestAccount] = field(default_factory=dict)
    jwks_requests: int = 0

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    def rotate(self, alg: str = "RS256") -> SigningKey:
        """A new current signing key; the old ones stay published until ``retire``."""
        key = SigningKey.new(alg)
        self.keys.append(key)
        return key

    def retire(self, kid: str) -> None:
        self.keys = [k for k in self.keys if k.kid != kid]

    def add_user(
        self,
        username: str,
        *,
        email: str | None = None,
        roles: tuple[str, ...] = (),
        password: str = "pw",  # noqa: S107
    ) -> TestAccount:
        account = TestAccount(username, password, email=email or f"{username}@example.test", roles=roles)
        self.accounts[username] = account
        return account

    def mint(
        self,
        account: TestAccount | None = None,
        *,
        expires_in: int = 300,
        audience: str | None = None,
        issuer: str | None = None,
        key: SigningKey | None = None,
        not_before: int | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token; every argument can be set wrong on purpose."""
        now = int(time.time())
        key = key or self.keys[-1]
        body: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.client_id,
            "iat": now,
            "exp": now + expires_in,
            "typ": "Bearer",
            "azp": self.client_id,
        }
        if account is not None:
            body |= {
                "sub": account.sub,
                "email": account.email,
                "email_verified": True,
                "preferred_username": account.username,
                "realm_access": {"roles": list(account.roles)},
            }
        if not_before is not None:
            body["nbf"] = not_before
        body |= claims
        return jwt.encode(body, key.private, algorithm=key.alg, headers={"kid": kid or key.kid})

    # --- the Keycloak endpoints ---
    def app(self) -> Starlette:
        prefix = f"/realms/{self.realm}"

        async def discovery(request: Request) -> JSONResponse:
            oidc = f"{self.issuer}/protocol/openid-connect"
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{oidc}/certs",
                    "token_endpoint": f"{oidc}/token",
                    "authorization_endpoint": f"{oidc}/auth",
                    "grant_types_supported": ["password", "client_credentials"],
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                }
            )

        async def certs(request: Request) -> JSONResponse:
            self.jwks_requests += 1
            return JSONResponse({"keys": [k.jwk() for k in self.keys]})

        async def token(request: Request) -> JSONResponse:
            form = dict(parse_qsl((await request.body()).decode()))  # no python-multipart needed
            if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = form.get("grant_type")
            if grant == "password":
                account = self.accounts.get(str(form.get("username")))
                if account is None or account.password != form.get("password"):
                    return JSONResponse(
                        {"error": "invalid_grant", "error_description": "Invalid user credentials"}, status_code=401
                    )
                access = self.mint(account)
            elif grant == "client_credentials":
                service = TestAccount(f"service-account-{self.client_id}", "", sub=f"service-{self.client_id}")
                access = self.mint(service, email=None, email_verified=False)
            else:
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": 300})

        return Starlette(
            routes=[
                Route(f"{prefix}/.well-known/openid-configuration", discovery),
                Route(f"{prefix}/protocol/openid-connect/certs", certs),
                Route(f"{prefix}/protocol/openid-connect/token", token, methods=["POST"]),
            ]
        )
