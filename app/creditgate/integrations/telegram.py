"""Telegram Mini App sign-in: verify ``initData`` and trade it for a short-lived API key.

Per Telegram's spec (core.telegram.org/bots/webapps#validating-data-received-via-the-mini-app): the
data-check string is every field but ``hash``, as ``key=value`` sorted by key and joined by newlines;
the secret key is HMAC-SHA256(key="WebAppData", msg=bot token); ``hash`` must equal the hex
HMAC-SHA256 of the data-check string under that secret. ``auth_date`` must be within
``telegram_max_age_seconds`` (and not in the future); each ``initData`` is accepted once (replay → 401).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.auth.oidc import user_for_identity
from creditgate.auth.service import issue_key
from creditgate.db.models import InboundEvent
from creditgate.errors import AuthenticationFailed
from creditgate.settings import Settings

ISSUER = "telegram"
CLOCK_SKEW_SECONDS = 60


def check_hash(fields: dict[str, str], bot_token: str) -> str:
    """The hash Telegram would have put on these fields (hex)."""
    data_check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "hash")
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    return hmac.new(secret, data_check.encode(), hashlib.sha256).hexdigest()


def verify(init_data: str, settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """The Mini App user (``id``, ``username``, …) if ``init_data`` is genuine and fresh; 401 otherwise."""
    assert settings.telegram_bot_token is not None
    try:
        fields = dict(parse_qsl(init_data, keep_blank_values=True, strict_parsing=True))
    except ValueError as exc:
        raise AuthenticationFailed("initData is not a query string") from exc
    received = fields.get("hash", "")
    if not hmac.compare_digest(check_hash(fields, settings.telegram_bot_token), received):
        raise AuthenticationFailed("initData hash does not verify (tampered, or another bot's)")
    try:
        auth_date = int(fields["auth_date"])
        user = json.loads(fields["user"])
    except (KeyError, ValueError) as exc:
        raise AuthenticationFailed("initData lacks auth_date or user") from exc
    age = (now if now is not None else time.time()) - auth_date
    if age > settings.telegram_max_age_seconds:
        raise AuthenticationFailed(f"initData is stale ({int(age)} s old, at most {settings.telegram_max_age_seconds})")
    if age < -CLOCK_SKEW_SECONDS:
        raise AuthenticationFailed("initData auth_date is in the future")
    if not isinstance(user, dict) or not isinstance(user.get("id"), int):
        raise AuthenticationFailed("initData user has no numeric id")
    return {**user, "_hash": received}


async def exchange(session: AsyncSession, user: dict[str, Any], settings: Settings) -> tuple[str, int, int]:
    """Consume the initData (once), link or create the user, issue a key for ``telegram_key_ttl_seconds``."""
    try:
        async with session.begin_nested():
            session.add(InboundEvent(source=ISSUER, event_id=user["_hash"], outcome="exchanged"))
            await session.flush()
    except IntegrityError as exc:
        raise AuthenticationFailed("this initData was already used") from exc
    user_id = await user_for_identity(session, issuer=ISSUER, subject=str(user["id"]), email=None)
    ttl = settings.telegram_key_ttl_seconds
    return await issue_key(session, user_id=user_id, ttl=timedelta(seconds=ttl)), ttl, user_id
