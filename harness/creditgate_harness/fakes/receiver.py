"""A fake notification receiver: checks signatures, dedupes by id, can fail or slow down on request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Verify ``X-Creditgate-Signature: t=<unix>,v1=<hex>`` over ``"<t>.<body>"``."""
    parts = dict(p.split("=", 1) for p in (header or "").split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return False
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@dataclass
class NotificationReceiver:
    """``received``: every delivery (duplicates included); ``unique``: one per notification id."""

    secret: str = "whsec_notify_test"  # noqa: S105 - a fake's secret
    fail_next: int = 0
    fail_status: int = 503
    delay: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected_signatures: int = 0

    @property
    def unique(self) -> dict[str, dict[str, Any]]:
        return {n["id"]: n for n in self.received}

    def app(self) -> Starlette:
        async def receive(request: Request) -> JSONResponse:
            body = await request.body()
            if self.delay:
                await asyncio.sleep(self.delay)
            if not signature_ok(self.secret, body, request.headers.get("x-creditgate-signature")):
                self.rejected_signatures += 1
                return JSONResponse({"error": "bad signature"}, status_code=400)
            if self.fail_next > 0:
                self.fail_next -= 1
                return JSONResponse({"error": "scripted failure"}, status_code=self.fail_status)
            notification = json.loads(body)
            assert notification["id"] == request.headers["x-creditgate-notification-id"]
            self.received.append(notification)
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hooks/creditgate", receive, methods=["POST"])])
