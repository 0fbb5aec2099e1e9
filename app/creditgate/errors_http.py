"""The one place gateway errors become HTTP responses (and their OpenAPI description)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from creditgate.errors import GatewayError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str


class ErrorBody(BaseModel):
    """Every error the gateway returns: ``{"error": {"type", "message", ...}}``."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Rejected by the provider as invalid",
    401: "Missing or invalid API key",
    402: "Not enough credits (body has `balance`, `required`, `max_affordable_tokens`)",
    403: "The key lacks the required role",
    404: "Not found",
    409: "Conflict (e.g. an idempotency key reused with different fields)",
    422: "Invalid request",
    429: "Monthly call quota used up (X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset)",
    502: "No provider could serve the request (body lists the attempts)",
    503: "A dependency is unavailable",
}


def ERROR_RESPONSES(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return _json(exc.status_code, exc.body(), exc.headers())


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return _json(422, {"error": {"type": "invalid_request", "message": message, "details": details}})


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
    if exc.status_code == 405:
        body = {"error": {"type": "method_not_allowed", "message": str(exc.detail)}}
        return _json(405, body, {"Allow": _allowed_methods(request)})
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8)
        return _json(422, {"error": {"type": "invalid_request", "message": str(exc.detail)}})
    kinds = {404: "not_found", 405: "method_not_allowed"}
    body = {"error": {"type": kinds.get(exc.status_code, "http_error"), "message": str(exc.detail)}}
    return _json(exc.status_code, body, dict(exc.headers) if exc.headers else None)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _json(500, {"error": {"type": "internal_error", "message": "internal error"}})


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
