"""Stripe-signed webhook delivery: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">``."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from creditgate_harness.fakes.stripe.app import FakeStripe
from creditgate_harness.fakes.stripe.signing import sign_payload

Deliver = Callable[[bytes, dict[str, str]], Awaitable[httpx.Response]]

__all__ = ["Deliver", "StripeWebhooks", "sign_payload"]


async def _nowhere(payload: bytes, headers: dict[str, str]) -> httpx.Response:
    raise RuntimeError("no webhook target: use stripe_webhooks.to(async_client, '/your/webhook/path')")


class StripeWebhooks:
    """Signs the fake's events and delivers them to the gateway, with ways to misbehave like Stripe does."""

    def __init__(self, fake: FakeStripe, deliver: Deliver | None, *, secret: str) -> None:
        self.fake = fake
        self.secret = secret
        self._deliver = deliver or _nowhere
        self._sent = 0

    def to(self, target: httpx.AsyncClient | str, path: str = "") -> StripeWebhooks:
        """Deliver to ``path`` on an httpx client (e.g. ``async_client``) or on a base URL from now on; returns self."""

        async def deliver(payload: bytes, headers: dict[str, str]) -> httpx.Response:
            if isinstance(target, str):
                async with httpx.AsyncClient(timeout=30) as client:
                    return await client.post(target + path, content=payload, headers=headers)
            return await target.post(path, content=payload, headers=headers)

        self._deliver = deliver
        return self

    def pending(self) -> list[dict[str, Any]]:
        """Events the fake emitted that have not been delivered yet."""
        return self.fake.events[self._sent :]

    async def send(
        self,
        event: dict[str, Any],
        *,
        timestamp: int | None = None,
        secrets: Sequence[str] | None = None,
        tamper: bool = False,
        signature: str | None = None,
    ) -> httpx.Response:
        """Deliver one event, signed (or with ``signature`` as given, or tampered after signing)."""
        payload = json.dumps(event).encode()
        header = (
            signature
            if signature is not None
            else sign_payload(payload, secrets=secrets or [self.secret], timestamp=timestamp)
        )
        if tamper:
            payload = payload.replace(b'"livemode": false', b'"livemode": true ')
        headers = {"Content-Type": "application/json"}
        if header:
            headers["Stripe-Signature"] = header
        return await self._deliver(payload, headers)

    async def deliver_pending(
        self, *, times: int = 1, shuffle: bool = False, seed: int | None = None
    ) -> list[httpx.Response]:
        """Deliver every pending event ``times`` times, optionally shuffled (Stripe's at-least-once, any order)."""
        batch = [e for e in self.pending() for _ in range(times)]
        self._sent = len(self.fake.events)
        if shuffle:
            random.Random(seed).shuffle(batch)
        return [await self.send(event) for event in batch]
