"""Refuse, before any route runs, a body larger than ``CREDITGATE_MAX_BODY_BYTES`` (413) and a JSON body holding
text that cannot be encoded: a lone UTF-16 surrogate (400/422 ``unencodable_text``).

JSON may spell one (``"\\ud800"``) and Python decodes it into a ``str`` that no UTF-8 encoder takes, so without
this guard it surfaces wherever the text is next encoded — the token estimate, the upstream request, a database
insert — as a 500, after the quota call or the hold. The check is one ``in`` on the raw bytes for every request;
only a body that spells a surrogate escape is decoded again to see whether it is unpaired (valid pairs — emoji
sent by an ``ensure_ascii`` client — pass). ``suites/adversarial/test_hostile_inputs.py`` sends one to every route
the OpenAPI schema lists with a body, so a router created without ``route_class=GuardedRoute`` fails it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from creditgate.errors import GatewayError
from creditgate.llm.bounds import unencodable

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate(body: bytes) -> UnicodeEncodeError | None:
    """The encoding error a lone surrogate in this JSON body causes, or ``None`` (also for a body not JSON)."""
    if b"\\u" not in body or not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        return exc
    except ValueError:  # not JSON: the route's own parsing says so
        return None
    return None


class RequestTooLarge(GatewayError):
    status_code = 413
    error_type = "request_too_large"


async def _body(request: Request) -> bytes:
    """The body, read at most ``CREDITGATE_MAX_BODY_BYTES`` into memory (413 past it, declared or streamed)."""
    runtime = getattr(request.app.state, "runtime", None)
    limit: int | None = runtime.settings.max_body_bytes if runtime is not None else None
    if limit is None:
        return await request.body()
    too_large = RequestTooLarge(f"the request body is larger than {limit} bytes (CREDITGATE_MAX_BODY_BYTES)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # what Request.body() caches: the route parses this same body, never reads it again
    return body


async def guarded_body(request: Request, *, parsed: bool) -> bytes:
    """The body within the size limit (413) and, for a route that parses it as JSON, free of lone surrogates."""
    body = await _body(request)
    if parsed and (error := lone_surrogate(body)) is not None:
        raise unencodable(error)
    return body


class GuardedRoute(APIRoute):
    """Every router's ``route_class``: a route that takes a body refuses one over the limit, and one that parses
    JSON a lone surrogate in it, before its dependencies (authentication included) or its handler run. FastAPI's
    documented extension point for work on the raw request; the route parses the body read here (cached)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.methods or not self.methods & {"POST", "PUT", "PATCH"}:
            return handler
        parsed = self.body_field is not None  # else the route reads the raw body itself (the signed webhooks)

        async def guarded(request: Request) -> Response:
            await guarded_body(request, parsed=parsed)
            return await handler(request)

        return guarded
