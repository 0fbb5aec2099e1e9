"""The harness's identity fakes and signers against the protocols as published, checked independently.

Each check re-derives the protocol from its specification here (not from app/ or harness/ code), so a
fake that drifted from the real service would fail, not just agree with itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qsl

import httpx
import jwt
import pytest

from creditgate.notifications.delivery import sign
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.oidc import FakeOidcIssuer
from creditgate_harness.fakes.signers import lago_webhook, telegram_init_data

pytestmark = pytest.mark.contract

# OpenID Connect Discovery 1.0, section 3: REQUIRED provider metadata.
DISCOVERY_REQUIRED = {
    "issuer",
    "authorization_endpoint",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
}


def test_fake_keycloak_discovery_jwks_and_token_endpoint_follow_the_specs(fake_oidc: Fake[FakeOidcIssuer]) -> None:
    discovery = httpx.get(f"{fake_oidc.state.issuer}/.well-known/openid-configuration").json()
    assert discovery.keys() >= DISCOVERY_REQUIRED
    assert discovery["issuer"] == fake_oidc.state.issuer  # exactly the iss tokens carry
    assert discovery["jwks_uri"].startswith(
        f"{fake_oidc.state.base_url}/realms/{fake_oidc.state.realm}/protocol/openid-connect/"
    )
    fake_oidc.state.add_user("carol", password="pw")
    form = {
        "grant_type": "password",
        "client_id": fake_oidc.state.client_id,
        "client_secret": fake_oidc.state.client_secret,
        "username": "carol",
        "password": "pw",
    }
    token = httpx.post(discovery["token_endpoint"], data=form)
    assert token.status_code == 200
    assert {"access_token", "token_type", "expires_in"} <= token.json().keys()  # RFC 6749 section 5.1
    # PyJWT's own JWKS client (RFC 7517) finds the key and the token verifies with it.
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token.json()["access_token"])
    claims = jwt.decode(
        token.json()["access_token"], signing_key, algorithms=["RS256"], audience=fake_oidc.state.client_id
    )
    assert claims["iss"] == fake_oidc.state.issuer
    assert claims["realm_access"] == {"roles": []}  # Keycloak's shape for realm roles
    # RFC 6749 section 5.2 error codes.
    assert httpx.post(discovery["token_endpoint"], data={**form, "password": "x"}).json()["error"] == "invalid_grant"
    assert (
        httpx.post(discovery["token_endpoint"], data={**form, "client_secret": "x"}).json()["error"] == "invalid_client"
    )
    assert httpx.post(discovery["token_endpoint"], data={**form, "grant_type": "implicit"}).json()["error"] == (
        "unsupported_grant_type"
    )


def test_lago_hmac_signature_is_lagos_documented_scheme() -> None:
    body, headers = lago_webhook("subscription.started", {"plan_code": "pro"}, hmac_key="api-key")
    # Lago's docs: base64(HMAC-SHA256(api key, raw body)), in X-Lago-Signature, algorithm "hmac".
    expected = base64.b64encode(hmac.new(b"api-key", body, "sha256").digest()).decode()
    assert (headers["X-Lago-Signature"], headers["X-Lago-Signature-Algorithm"]) == (expected, "hmac")
    assert headers["X-Lago-Unique-Key"]
    assert json.loads(body)["webhook_type"] == "subscription.started"


def test_telegram_init_data_is_signed_as_telegram_documents() -> None:
    bot_token = "123:abc"
    init = telegram_init_data(bot_token, {"id": 7, "first_name": "A"}, auth_date=1_700_000_000)
    fields = dict(parse_qsl(init))
    received = fields.pop("hash")
    # core.telegram.org/bots/webapps: secret_key = HMAC_SHA256(<bot_token>, "WebAppData");
    # data_check_string = sorted "key=value" lines; hash = hex(HMAC_SHA256(data_check_string, secret_key)).
    secret_key = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    data_check_string = "\n".join(f"{k}={fields[k]}" for k in sorted(fields))
    assert received == hmac.new(secret_key, data_check_string.encode(), hashlib.sha256).hexdigest()
    assert fields["auth_date"] == "1700000000"


def test_notification_signature_can_be_checked_by_a_receiver_from_the_readme() -> None:
    body, now = b'{"id":"n1","type":"refund"}', int(time.time())
    header = sign("whsec", body, now)
    # docs/sign-in.md: X-Creditgate-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    assert int(t) == now
    assert v1 == hmac.new(b"whsec", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
