"""Refuse, before any route runs, a JSON body holding text that cannot be encoded: a lone UTF-16 surrogate.

JSON may spell one (``"\\ud800"``) and Python decodes it into a ``str`` that no UTF-8 encoder takes, so without
this guard it surfaces wherever the text is next encoded — the token estimate, the upstream request, a database
insert — as a 500, after the quota call or the hold. The check is one ``in`` on the raw bytes for every request;
only a body that spells a surrogate escape is decoded again to see whether it is unpaired (valid pairs — emoji
sent by an ``ensure_ascii`` client — pass).
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def _guard(app: ASGIApp) -> ASGIApp:
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                await app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if (error := lone_surrogate(body)) is not None:
            raise unencodable(error)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return guarded


def guard_json_bodies(app: FastAPI) -> None:
    """Put the guard in front of every route that reads a body."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            route.app = _guard(route.app)
