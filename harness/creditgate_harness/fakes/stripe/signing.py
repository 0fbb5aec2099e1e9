"""Stripe's webhook signature: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">``."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence


def sign_payload(payload: bytes, *, secrets: Sequence[str], timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload`` (one ``v1`` per secret, as during a rotation)."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = f"{t}.".encode() + payload
    parts = [f"t={t}"] + [f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets]
    return ",".join(parts)
