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
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import get_telemetry_data
from starlette.exceptions import HTTPException

from creditgate.auth.deps import principal_of
from creditgate.http_guard import GuardedRoute, guarded_body

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


class LeanRoute(GuardedRoute):
    """An inference route: documented by FastAPI, served by a straight-line handler (module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
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

        return lean
