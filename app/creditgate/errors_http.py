"""The one place gateway errors become HTTP responses (and their OpenAPI description).

Every error is written in the protocol of the route it happened on (``shape_of``):

- the gateway's own routes: ``{"error": {"type", "code", "message", ...}}``; invalid input is 422;
- OpenAI's routes (``/v1/...``): ``{"error": {"message", "type", "param", "code", ...}}``; invalid input is
  400 ``invalid_request_error``, as OpenAI answers it;
- Anthropic's routes (``/v1/messages...``, and ``/v1/models`` asked with ``anthropic-version``):
  ``{"type": "error", "error": {"type", "message", "code", ...}}`` with Anthropic's error types.

The extra fields an error carries (a 402's ``balance``, ``required``, ``max_affordable_tokens``) stay in
``error`` in every shape.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import asyncpg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from creditgate.db.errors import unreachable
from creditgate.errors import GatewayError

log = logging.getLogger(__name__)
Shape = Literal["gateway", "openai", "anthropic"]

# Anthropic's documented error types by status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
# OpenAI calls every fault of the request itself invalid_request_error; other types stay the gateway's own.
_OPENAI_INVALID = frozenset({400, 404, 405, 409, 413, 422})


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    code: str | None = None
    message: str


class ErrorBody(BaseModel):
    """The gateway's own routes: ``{"error": {"type", "code", "message", ...}}``."""

    error: ErrorDetail


class OpenAIErrorDetail(ErrorDetail):
    param: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's routes: ``{"error": {"message", "type", "param", "code", ...}}``."""

    error: OpenAIErrorDetail


class AnthropicErrorBody(BaseModel):
    """Anthropic's routes: ``{"type": "error", "error": {"type", "message", ...}}``."""

    type: Literal["error"] = "error"
    error: ErrorDetail


_MODELS: dict[Shape, type[BaseModel]] = {
    "gateway": ErrorBody,
    "openai": OpenAIErrorBody,
    "anthropic": AnthropicErrorBody,
}
_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or invalid API key",
    402: "Not enough credits (body has `code`, `balance`, `required`, `max_affordable_tokens`)",
    403: "The key lacks the required role",
    404: "Not found",
    409: "Conflict (e.g. an idempotency key reused with different fields)",
    422: "Invalid request",
    429: "Monthly call quota used up (X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset)",
    502: "No provider could serve the request (body lists the attempts)",
    503: "A dependency is unavailable",
}
_PROTOCOL_DESCRIPTIONS = {400: "Invalid request (bad input, or rejected by the provider)"}


def ERROR_RESPONSES(*statuses: int, protocol: Shape = "gateway") -> dict[int | str, dict[str, Any]]:
    descriptions = _DESCRIPTIONS | (_PROTOCOL_DESCRIPTIONS if protocol != "gateway" else {})
    return {s: {"model": _MODELS[protocol], "description": descriptions[s]} for s in statuses}


def shape_of(request: Request) -> Shape:
    """Which protocol's error shape the caller of this path expects."""
    path = request.url.path
    if path.startswith("/v1/messages") or (path.startswith("/v1/models") and "anthropic-version" in request.headers):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "gateway"


def _respond(
    request: Request,
    status: int,
    *,
    type_: str,
    code: str,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    shape, extra = shape_of(request), extra or {}
    if shape != "gateway" and status == 422:
        status = 400  # both vendors answer a request they cannot accept with 400
    if shape == "openai":
        kind = "invalid_request_error" if status in _OPENAI_INVALID else type_
        error = {"message": message, "type": kind, "param": None, "code": code, **extra}
        body: dict[str, Any] = {"error": error}
    elif shape == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message, "code": code, **extra}}
    else:
        body = {"error": {"type": type_, "code": code, "message": message, **extra}}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return _respond(
        request,
        exc.status_code,
        type_=exc.error_type,
        code=exc.code,
        message=exc.message,
        extra=exc.extra,
        headers=exc.headers(),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    param = ".".join(str(p) for p in first["loc"][1:]) or None  # OpenAI's param: the field, without "body"
    return _respond(
        request, 422, type_="invalid_request", code="invalid_request", message=message,
        extra={"param": param, "details": details},
    )  # fmt: skip


def _allowed_methods(request: Request) -> str:
    """Every method any route on this path accepts (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 405:
        return _respond(
            request, 405, type_="method_not_allowed", code="method_not_allowed", message=message,
            headers={"Allow": _allowed_methods(request)},
        )  # fmt: skip
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8)
        return _respond(request, 422, type_="invalid_request", code="invalid_request", message=message)
    kind = {404: "not_found", 413: "request_too_large"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return _respond(request, exc.status_code, type_=kind, code=kind, message=message, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _respond(request, 500, type_="internal_error", code="internal_error", message="internal error")


# What the database layers raise (SQLAlchemy's wrapper, asyncpg's own on the fast ledger, a refused socket).
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,
    asyncpg.InterfaceError,
    asyncpg.PostgresError,
    ConnectionError,
)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After when the database could not be reached (Postgres restarting); else a 500."""
    if not unreachable(exc):
        return await _unexpected(request, exc)
    log.warning("database unreachable: %s: %s", type(exc).__name__, exc)
    return _respond(
        request,
        503,
        type_="service_unavailable",
        code="database_unavailable",
        message="the database is unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


def _vendor_routes_answer_400(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route with a body; the vendors' routes (``/v1/...``) answer invalid input
    with 400 instead (``_respond``), so their OpenAPI operations list the 400 and not the 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for path, operations in build()["paths"].items():
                if path.startswith("/v1/"):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        assert app.openapi_schema is not None  # build() stored it
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    _vendor_routes_answer_400(app)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database_error)
    app.add_exception_handler(Exception, _unexpected)
