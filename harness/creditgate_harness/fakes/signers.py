"""Signers that speak other services' webhook and sign-in protocols, for tests.

- ``lago_webhook``: a Lago webhook body and headers, signed ``hmac`` (base64 HMAC-SHA256 of the body
  with the key) or ``jwt`` (RS256 with ``data`` = the body), with ``X-Lago-Unique-Key``.
- ``telegram_init_data``: a Mini App ``initData`` string signed with a bot token, as Telegram does.
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

import jwt

from creditgate.integrations.telegram import check_hash

TELEGRAM_BOT_TOKEN = "123456789:TEST-creditgate-bot-token"  # noqa: S105 - what the harness's gateway is given
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
    fields["hash"] = check_hash(fields, bot_token)
    return urlencode(fields)
