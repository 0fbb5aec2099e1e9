"""OIDC bearer tokens against the fake Keycloak issuer: what is accepted and every way a token is refused."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Identity, User
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.oidc import FakeOidcIssuer, SigningKey

BALANCE = "/user/balance"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(client: httpx.AsyncClient, token: str) -> str:
    response = await client.get(BALANCE, headers=bearer(token))
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()["error"]
    assert body["type"] == "authentication_error"
    return str(body["message"])


async def test_password_grant_token_signs_in_and_provisions_the_user_once(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer], cg_sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    alice = fake_oidc.state.add_user("alice", password="s3cret")
    async with httpx.AsyncClient() as http:
        token_url = f"{fake_oidc.state.issuer}/protocol/openid-connect/token"
        form = {
            "grant_type": "password",
            "client_id": fake_oidc.state.client_id,
            "client_secret": fake_oidc.state.client_secret,
            "username": "alice",
            "password": "s3cret",
        }
        token = (await http.post(token_url, data=form)).json()["access_token"]
        assert (await http.post(token_url, data={**form, "password": "wrong"})).status_code == 401
    first = await async_client.get(BALANCE, headers=bearer(token))
    assert first.status_code == 200, first.text
    assert first.json()["balance"] == "0.00"
    assert (await async_client.get(BALANCE, headers=bearer(fake_oidc.state.mint(alice)))).status_code == 200
    async with cg_sessionmaker() as session:
        links = (await session.execute(select(Identity.user_id).where(Identity.subject == alice.sub))).all()
        assert len(links) == 1  # found by sub the second time, not created twice
        assert await session.scalar(select(User.email).where(User.id == links[0].user_id)) == alice.email


async def test_client_credentials_grant_gives_a_service_account(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer]
) -> None:
    async with httpx.AsyncClient() as http:
        form = {
            "grant_type": "client_credentials",
            "client_id": fake_oidc.state.client_id,
            "client_secret": fake_oidc.state.client_secret,
        }
        token = (await http.post(f"{fake_oidc.state.issuer}/protocol/openid-connect/token", data=form)).json()
    assert (await async_client.get(BALANCE, headers=bearer(token["access_token"]))).status_code == 200


async def test_existing_user_is_linked_by_verified_email(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer], cg_funded_user
) -> None:  # type: ignore[no-untyped-def]
    account = fake_oidc.state.add_user("bob", email=cg_funded_user.email)
    response = await async_client.get(BALANCE, headers=bearer(fake_oidc.state.mint(account)))
    assert response.json()["balance"] == "1000.00"
    unverified = fake_oidc.state.add_user("mallory", email=cg_funded_user.email)
    token = fake_oidc.state.mint(unverified, email_verified=False)
    assert (await async_client.get(BALANCE, headers=bearer(token))).json()["balance"] == "0.00"  # not linked


async def test_admin_role_from_realm_access_roles(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer]
) -> None:
    admin = fake_oidc.state.add_user("root", roles=("creditgate-admin",))
    plain = fake_oidc.state.add_user("pleb", roles=("offline_access",))
    url = "/admin/settings/credit-increment"
    assert (await async_client.get(url, headers=bearer(fake_oidc.state.mint(admin)))).status_code == 200
    assert (await async_client.get(url, headers=bearer(fake_oidc.state.mint(plain)))).status_code == 403


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "token expired"),
        ("wrong_audience", "another audience"),
        ("wrong_issuer", "another issuer"),
        ("unknown_key", "key the issuer does not publish"),
        ("forged_with_known_kid", "signature does not verify"),
        ("not_yet_valid", "not yet valid"),
        ("hs256", "algorithm 'HS256' is not accepted"),
        ("alg_none", "algorithm 'none' is not accepted"),
        ("no_sub", "sub"),
        ("garbage", "malformed token"),
    ],
)
async def test_bad_tokens_are_refused_with_the_reason(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer], case: str, reason: str
) -> None:
    user = fake_oidc.state.add_user("eve")
    current = fake_oidc.state.keys[-1]
    token = {
        "expired": lambda: fake_oidc.state.mint(user, expires_in=-120),  # beyond the 30 s leeway
        "wrong_audience": lambda: fake_oidc.state.mint(user, audience="another-client"),
        "wrong_issuer": lambda: fake_oidc.state.mint(user, issuer="http://evil.example/realms/creditgate"),
        "unknown_key": lambda: fake_oidc.state.mint(user, key=SigningKey.new()),
        "forged_with_known_kid": lambda: fake_oidc.state.mint(user, key=SigningKey.new(), kid=current.kid),
        "not_yet_valid": lambda: fake_oidc.state.mint(user, not_before=int(time.time()) + 600),
        "hs256": lambda: jwt.encode(
            {"sub": "x", "iss": fake_oidc.state.issuer, "aud": fake_oidc.state.client_id, "exp": int(time.time()) + 60},
            "a-shared-secret-of-32-bytes-long!",
            algorithm="HS256",
            headers={"kid": current.kid},
        ),
        "alg_none": lambda: jwt.encode({"sub": "x"}, None, algorithm="none", headers={"kid": current.kid}),
        "no_sub": lambda: fake_oidc.state.mint(None),
        "garbage": lambda: "eyJhbGciOi.not-a.token",
    }[case]()
    assert reason in await refused(async_client, token)


async def test_leeway_accepts_a_token_that_expired_seconds_ago(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer]
) -> None:
    token = fake_oidc.state.mint(fake_oidc.state.add_user("late"), expires_in=-10)
    assert (await async_client.get(BALANCE, headers=bearer(token))).status_code == 200


async def test_es256_tokens_are_accepted(async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer]) -> None:
    fake_oidc.state.rotate("ES256")
    assert (
        await async_client.get(BALANCE, headers=bearer(fake_oidc.state.mint(fake_oidc.state.add_user("ec"))))
    ).status_code == 200


async def test_jwks_is_cached_and_fetched_again_on_rotation(
    async_client: httpx.AsyncClient, cg_app: FastAPI, fake_oidc: Fake[FakeOidcIssuer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("creditgate.auth.oidc.REFETCH_FLOOR_SECONDS", 0.0)
    user = fake_oidc.state.add_user("rot")
    for _ in range(3):
        assert (await async_client.get(BALANCE, headers=bearer(fake_oidc.state.mint(user)))).status_code == 200
    assert fake_oidc.state.jwks_requests == 1  # cached
    old = fake_oidc.state.keys[-1]
    fake_oidc.state.rotate()
    assert (await async_client.get(BALANCE, headers=bearer(fake_oidc.state.mint(user)))).status_code == 200
    assert fake_oidc.state.jwks_requests == 2  # the unknown kid made it fetch the set again
    fake_oidc.state.retire(old.kid)
    stale = fake_oidc.state.mint(user, key=old)
    assert (await async_client.get(BALANCE, headers=bearer(stale))).status_code == 200  # cached until the TTL
    cg_app.state.runtime.oidc._fetched_at -= 10_000  # the cache's TTL (oidc_jwks_ttl_seconds) passes
    assert "does not publish" in await refused(async_client, stale)
    assert fake_oidc.state.jwks_requests == 3


async def test_api_keys_still_work_beside_oidc(
    async_client: httpx.AsyncClient, fake_oidc: Fake[FakeOidcIssuer], cg_funded_user
) -> None:  # type: ignore[no-untyped-def]
    assert (await async_client.get(BALANCE, headers=cg_funded_user.headers)).status_code == 200
    assert (await async_client.get(BALANCE, headers=bearer("cg_not-a-key"))).status_code == 401


async def test_jwt_is_refused_when_no_issuer_is_configured(async_client: httpx.AsyncClient) -> None:
    from creditgate_harness.fakes.oidc import FakeOidcIssuer as Issuer

    token = Issuer().mint(None, sub="someone")
    assert (await async_client.get(BALANCE, headers=bearer(token))).status_code == 401
