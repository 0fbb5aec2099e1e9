"""Lago subscription webhooks → the account's plan (and so its monthly call quota).

Verified per Lago's documented scheme: ``X-Lago-Signature-Algorithm: hmac`` → ``X-Lago-Signature`` is
base64(HMAC-SHA256(key, raw body)); ``jwt`` → an RS256 JWT from ``lago_issuer`` whose ``data`` claim is
the raw body, checked with Lago's public key. Each webhook is applied once, by ``X-Lago-Unique-Key``,
in the transaction of its effect. ``subscription.started`` / ``subscription.updated`` set the plan
(Lago plan code → plan through ``lago_plan_map``, else the code itself); ``subscription.terminated``
returns the account to the default plan. Other types are recorded and ignored.

The customer is ``external_customer_id``: a gateway subject (``user:<id>`` / ``org:<id>``) or a user's email.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.db.models import InboundEvent, Org, User
from creditgate.errors import InvalidRequest, InvalidSignature
from creditgate.quotas.service import load_plans, set_plan
from creditgate.settings import Settings

HANDLED = {"subscription.started", "subscription.updated", "subscription.terminated"}


def verify(body: bytes, headers: dict[str, str], settings: Settings) -> dict[str, Any]:
    """The webhook's JSON if its signature verifies; ``InvalidSignature`` (400) otherwise."""
    algorithm = headers.get("x-lago-signature-algorithm", "jwt").lower()
    signature = headers.get("x-lago-signature")
    if not signature:
        raise InvalidSignature("missing X-Lago-Signature")
    if algorithm == "hmac":
        if not settings.lago_hmac_key:
            raise InvalidSignature("hmac signatures are not configured here (CREDITGATE_LAGO_HMAC_KEY)")
        expected = base64.b64encode(hmac.new(settings.lago_hmac_key.encode(), body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature.encode()):
            raise InvalidSignature("X-Lago-Signature does not match the body")
    elif algorithm == "jwt":
        if not settings.lago_public_key:
            raise InvalidSignature("jwt signatures are not configured here (CREDITGATE_LAGO_PUBLIC_KEY)")
        try:
            claims = jwt.decode(signature, settings.lago_public_key, algorithms=["RS256"], issuer=settings.lago_issuer)
        except jwt.InvalidTokenError as exc:
            raise InvalidSignature(f"X-Lago-Signature is not a valid Lago JWT: {exc}") from exc
        if claims.get("data") != body.decode("utf-8", "replace"):
            raise InvalidSignature("X-Lago-Signature was issued for another body")
    else:
        raise InvalidSignature(f"unknown X-Lago-Signature-Algorithm {algorithm!r} (hmac or jwt)")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest("the webhook body is not JSON") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("webhook_type"), str):
        raise InvalidRequest("a Lago webhook is an object with a webhook_type")
    return payload


async def _subject(session: AsyncSession, customer: str) -> str | None:
    kind, _, raw_id = customer.partition(":")
    if kind in {"user", "org"} and raw_id.isdigit():
        model = User if kind == "user" else Org
        return customer if await session.get(model, int(raw_id)) is not None else None
    user_id = await session.scalar(select(User.id).where(User.email == customer))
    return f"user:{user_id}" if user_id is not None else None


async def apply(session: AsyncSession, payload: dict[str, Any], *, unique_key: str, settings: Settings) -> str:
    """Apply one verified webhook once; returns what happened (``duplicate`` for a repeat)."""
    if await session.get(InboundEvent, ("lago", unique_key)) is not None:
        return "duplicate"
    outcome = await _apply(session, payload, settings)
    session.add(InboundEvent(source="lago", event_id=unique_key, outcome=outcome[:64]))
    await session.flush()
    return outcome


async def _apply(session: AsyncSession, payload: dict[str, Any], settings: Settings) -> str:
    kind = payload["webhook_type"]
    if kind not in HANDLED:
        return "ignored"
    subscription = payload.get("subscription")
    if not isinstance(subscription, dict):
        raise InvalidRequest(f"{kind} carries no subscription object")
    subject = await _subject(session, str(subscription.get("external_customer_id") or ""))
    if subject is None:
        return "unknown customer"
    plans = load_plans()
    if kind == "subscription.terminated" or subscription.get("status") in {"terminated", "canceled"}:
        await set_plan(session, subject=subject, plan=None, plans=plans)
        return "subscription ended"
    code = str(subscription.get("plan_code") or "")
    plan = settings.lago_plan_map.get(code, code)
    if plan not in plans:
        return f"unknown plan {code!r}"
    await set_plan(
        session, subject=subject, plan=plan, plans=plans, source="lago", external_id=subscription.get("external_id")
    )
    return f"plan {plan}"
