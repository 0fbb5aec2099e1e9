"""One pure-ASGI middleware per request: its id (``X-Request-Id``), its metrics and its log line.

Route, status, latency come from the ASGI exchange; model, provider and credits from the request's
``RequestInfo`` (see ``context``); a refusal's reason from the small JSON body of a 402/429.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from creditgate.observability import context, metrics
from creditgate.observability.logs import REQUEST_LOGGER

log = logging.getLogger(REQUEST_LOGGER)
_REFUSALS = (402, 429)
_SNIFF_LIMIT = 16_384


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, metrics_enabled: bool = True) -> None:
        self.app = app
        self.metrics_enabled = metrics_enabled
        # The metric children of each label set seen, pre-bound: a handful of routes × statuses × models.
        self._bound: dict[tuple[str, str, int, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = context.RequestInfo(request_id=uuid.uuid4().hex)
        token = context.begin(info)
        started = time.perf_counter()
        status = 500
        refusal: bytearray | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, refusal
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                has_id = False
                for name, value in headers:
                    lowered = name.lower()
                    if lowered == b"x-request-id":  # the inference routes use their metering id
                        info.request_id, has_id = value.decode("latin-1"), True
                    elif lowered == b"x-creditgate-provider" and not info.provider:
                        info.provider = value.decode("latin-1")
                if not has_id:
                    headers.append((b"x-request-id", info.request_id.encode()))
                    message = {**message, "headers": headers}
                if status in _REFUSALS:
                    refusal = bytearray()
            elif message["type"] == "http.response.body" and refusal is not None and len(refusal) < _SNIFF_LIMIT:
                refusal += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            context.end(token)
            self._record(scope, info, status, time.perf_counter() - started, refusal)

    def _record(
        self, scope: Scope, info: context.RequestInfo, status: int, elapsed: float, refusal: bytearray | None
    ) -> None:
        template: str | None = getattr(scope.get("route"), "path", None)
        # A mounted app's routes (the demo's fake Stripe) carry the mount's prefix in root_path.
        route = scope.get("root_path", "") + template if template else "unmatched"
        method: str = scope["method"]
        if self.metrics_enabled:
            key = (route, method, status, info.model, info.provider)
            if (bound := self._bound.get(key)) is None:  # labels() validates and locks: once per label set
                bound = self._bound[key] = (
                    metrics.REQUESTS.labels(route, method, str(status), info.model, info.provider),
                    metrics.REQUEST_SECONDS.labels(route),
                )
            bound[0].inc()
            bound[1].observe(elapsed)
            if refusal is not None:
                metrics.REFUSALS.labels(str(status), _reason(refusal)).inc()
        if log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "request_id": info.request_id,
                "method": method,
                "route": route,
                "status": status,
                "latency_ms": round(elapsed * 1000, 1),
                "model": info.model or None,
                "provider": info.provider or None,
                "credits": str(info.charged) if info.charged is not None else None,
            }
            log.info("%s %s %s", method, route, status, extra={"fields": fields})


def _reason(body: bytearray) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("reason") or error.get("type") or "unknown")[:64]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unknown"
