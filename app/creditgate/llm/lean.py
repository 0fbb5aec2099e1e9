"""``LeanRoute``: the inference routes' ``route_class`` — FastAPI documents them, a short handler serves them.

FastAPI builds the route's OpenAPI operation from the endpoint's signature as usual (body model, the API-key
security schemes of ``get_principal``, responses), but at request time FastAPI's generic handler would solve the
endpoint's dependency graph again for every request (the runtime, two header extractors, the principal),
look up telemetry and endpoint context, and copy the body twice. On the hot path that was about a tenth of a
request's CPU (``python -m bench.overhead``, docs/benchmarks.md). This handler does the same steps, in the same
order and with the same errors, as straight-line code:

1. the body, at most ``CREDITGATE_MAX_BODY_BYTES`` (413), and no lone surrogate in it (``http_guard``);
2. JSON decoded once when the content type is JSON (invalid JSON: FastAPI's ``json_invalid`` error);
3. the API key → ``Principal`` (``auth.deps.principal_of``: 401 before any body validation, as FastAPI's order);
4. the body validated against the endpoint's model by FastAPI's own field (the same errors, the same 400 body);
5. the endpoint, called as ``endpoint(body=…, principal=…, rt=…)``: the signature every inference route has.

With FastAPI's native OpenTelemetry on (``CREDITGATE_OTEL_ENABLED``) the generic handler runs instead, so spans
keep their dependency and body data. ``suites/unit/llm/test_lean.py`` holds the two handlers to the same answers.

``LeanApp`` also serves these routes below Starlette's middleware stack. A request passes through about ten layers
there, each a call and most a wrapper of ``send``: the server-error and exception middlewares, FastAPI's
telemetry, exit-stack and body-limit layers, the router's linear match, the route's own exception wrapper. For a
POST to one of the four paths, ``LeanApp`` calls the route's handler directly, inside the same
``ObservabilityMiddleware``, and turns an exception into a response with the app's own exception handlers, looked
up as Starlette's two exception middlewares look them up. Every other request, and every request while OpenTelemetry
is on, takes the whole stack.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.telemetry import get_telemetry_data
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from creditgate.auth.deps import principal_of
from creditgate.http_guard import GuardedRoute, guarded_body
from creditgate.observability.middleware import ObservabilityMiddleware

_PARAMETERS = ("body", "principal", "rt")
_MISSING = object()


def _json_content(content_type: str | None) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/*+json``; no content type is not JSON (strict)."""
    if content_type is None:
        return False
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def decode(request: Request, raw: bytes) -> Any:
    """The body as FastAPI hands it to validation: decoded JSON, the raw bytes when not JSON, ``_MISSING`` if empty."""
    if not raw:
        return _MISSING
    if not _json_content(request.headers.get("content-type")):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([error | {"ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except UnicodeDecodeError as exc:  # bytes that are not UTF-8: FastAPI's "error parsing the body"
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class LeanRoute(GuardedRoute):
    """An inference route: documented by FastAPI, served by a straight-line handler (module docstring)."""

    lean: Handler  # the handler itself, for LeanApp (``self.app`` wraps it in FastAPI's request/response layer)

    def get_route_handler(self) -> Handler:
        generic = super().get_route_handler()
        field = self.body_field
        parameters = tuple(self.dependant.call.__code__.co_varnames[:3]) if self.dependant.call else ()
        if field is None or parameters != _PARAMETERS:
            raise TypeError(f"{self.path}: a LeanRoute endpoint takes (body, principal, rt), not {parameters}")
        endpoint = self.endpoint

        async def lean(request: Request) -> Response:
            if get_telemetry_data() is not None:  # OpenTelemetry on: FastAPI's handler records the request
                return await generic(request)
            value = decode(request, await guarded_body(request, parsed=True))
            principal = await principal_of(request)
            if value is _MISSING:
                errors: list[Any] = [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
                body = None
            else:
                body, errors = field.validate(value, loc=("body",))
            if errors:
                raise RequestValidationError(errors, body=value if value is not _MISSING else None)
            response: Response = await endpoint(body=body, principal=principal, rt=request.app.state.runtime)
            return response

        self.lean = lean
        return lean


class LeanApp(FastAPI):
    """FastAPI, with the ``LeanRoute`` routes served below its middleware stack (module docstring).

    ``serve_lean(metrics_enabled=…)`` turns it on once every router is included (not with OpenTelemetry on); until
    then, and for every other request, this is FastAPI."""

    _lean: dict[str, LeanRoute] | None = None
    _observed: ObservabilityMiddleware | None = None

    def serve_lean(self, routers: Iterable[APIRouter], *, metrics_enabled: bool) -> None:
        """Serve the ``LeanRoute`` POSTs of ``routers`` (included with no prefix of their own) this way. Refused
        while the app has a middleware these requests would skip (only the observability middleware, which they
        keep, and ones marked ``lifespan_only`` are allowed), and no middleware may be added afterwards."""
        classes: list[Any] = [m.cls for m in self.user_middleware]
        others = (c for c in classes if c is not ObservabilityMiddleware and not getattr(c, "lifespan_only", False))
        skipped = [c.__name__ for c in others]
        if skipped:
            raise TypeError(f"LeanApp.serve_lean: the inference routes would skip {', '.join(skipped)}")
        routes = (r for router in routers for r in router.routes)
        self._lean = {r.path: r for r in routes if isinstance(r, LeanRoute) and r.methods == {"POST"}}
        self._observed = ObservabilityMiddleware(self._serve, metrics_enabled=metrics_enabled)

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        if self._lean is not None:
            raise TypeError("LeanApp: add middleware before serve_lean(), which serves the inference routes below it")
        super().add_middleware(middleware_class, *args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._lean is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and (route := self._lean.get(scope["path"])) is not None
            and not self.root_path
        ):
            assert self._observed is not None
            scope["app"], scope["route"] = self, route
            await self._observed(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await scope["route"].lean(request)
        except Exception as exc:
            await self._handled(request, exc, send)
            return
        if not isinstance(response, StreamingResponse):
            await response(scope, receive, send)
            return
        started = False  # a stream's error before its first byte is answered as any other; after it, it ends the stream

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await response(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            await self._handled(request, exc, send)

    async def _handled(self, request: Request, exc: Exception, send: Send) -> None:
        """Answer ``exc`` as Starlette's exception middleware would (an HTTP status's handler first, then the
        closest class in the exception's MRO); with none but the handler for ``Exception``, as its server-error
        middleware does: that answer, and the exception raised again for the server to log."""
        handlers = self.exception_handlers
        handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers and c is not Exception), None)
        last_resort = handler is None
        if handler is None:
            handler = handlers.get(500) or handlers.get(Exception)
        if handler is None:
            raise exc
        if is_async_callable(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        await response(request.scope, request.receive, send)
        if last_resort:
            raise exc
