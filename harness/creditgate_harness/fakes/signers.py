"""Signers that speak other services' webhook and sign-in protocols, for tests.

- ``lago_webhook``: a Lago webhook body and headers, signed ``hmac`` (base64 HMAC-SHA256 of the body
  with the key) or ``jwt`` (RS256 with ``data`` = the body), with ``X-Lago-Unique-Key``.
- ``telegram_init_data``: a Mini App ``initData`` string signed with a bot token, as Telegram does.

Both follow the vendors' published algorithms, written here from their documentation: nothing is borrowed from the
code under test, so a mistake there cannot hide behind the same mistake here. The JWT signer needs the ``oidc``
extra (PyJWT, cryptography), imported only when used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

TELEGRAM_BOT_TOKEN = "123456789:TEST-creditgate-bot-token"  # noqa: S105 - a test bot token for the app under test
LAGO_HMAC_KEY = "lago-test-hmac-key"


def lago_webhook(
    webhook_type: str,
    subscription: dict[str, Any],
    *,
    hmac_key: str | None = None,
    private_key: Any = None,
    issuer: str = "https://api.getlago.com",
    unique_key: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` as Lago sends them; pass ``hmac_key`` or an RSA ``private_key``."""
    body = json.dumps({"webhook_type": webhook_type, "object_type": "subscription", "subscription": subscription})
    raw = body.encode()
    headers = {"Content-Type": "application/json", "X-Lago-Unique-Key": unique_key or str(uuid.uuid4())}
    if hmac_key is not None:
        signature = base64.b64encode(hmac.new(hmac_key.encode(), raw, hashlib.sha256).digest()).decode()
        headers |= {"X-Lago-Signature": signature, "X-Lago-Signature-Algorithm": "hmac"}
    else:
        import jwt  # the oidc extra

        token = jwt.encode({"data": body, "iss": issuer}, private_key, algorithm="RS256")
        headers |= {"X-Lago-Signature": token, "X-Lago-Signature-Algorithm": "jwt"}
    return raw, headers


def telegram_init_data(bot_token: str, user: dict[str, Any], *, auth_date: int | None = None, **extra: str) -> str:
    """``Telegram.WebApp.initData`` for ``user``, signed for ``bot_token``."""
    fields = {
        "query_id": extra.pop("query_id", uuid.uuid4().hex),
        "user": json.dumps(user, separators=(",", ":")),
        "auth_date": str(auth_date if auth_date is not None else int(time.time())),
        **extra,
    }
    fields["hash"] = telegram_hash(fields, bot_token)
    return urlencode(fields)


def telegram_hash(fields: dict[str, str], bot_token: str) -> str:
    """The ``hash`` Telegram puts on Mini App ``initData`` (core.telegram.org/bots/webapps, "Validating data").

    The data-check-string is every received field but ``hash``, as ``key=value``, sorted by key, joined with
    ``\n``; the secret key is HMAC-SHA256 of the bot token keyed with the constant ``WebAppData``; the hash is
    the hex HMAC-SHA256 of the data-check-string keyed with that secret.
    """
    data_check_string = "\n".join(f"{key}={fields[key]}" for key in sorted(fields) if key != "hash")
    secret_key = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    return hmac.new(secret_key, data_check_string.encode(), hashlib.sha256).hexdigest()
