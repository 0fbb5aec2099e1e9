"""The least any Python gateway does per request: a bare ASGI app (no framework, no auth, no database, no JSON
parsing) that forwards the request body to the upstream through one shared httpx client and answers with the
upstream's bytes. ``bench/overhead.py`` measures it beside the gateway and LiteLLM, under the same uvicorn (uvloop,
httptools), as the ceiling of this machine for a proxy written in Python: a target above it asks for another
runtime, not a better design.

    FLOOR_UPSTREAM=http://127.0.0.1:8001 python -m uvicorn bench.python_floor:app
"""

from __future__ import annotations

import os
from typing import Any

import httpx

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8001")
_client: httpx.AsyncClient | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
                _client = httpx.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=60)
                await send({"type": "lifespan.startup.complete"})
        if _client is not None:
            await _client.aclose()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert _client is not None, "the lifespan starts the client"
    upstream = await _client.post(scope["path"], content=body, headers={"content-type": "application/json"})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(upstream.content)).encode())]
    await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": upstream.content})
