"""The least any Python gateway does per request: a bare ASGI app (no framework, no auth, no database, no JSON
parsing) that forwards the request body to the upstream through one shared client and answers with the upstream's
bytes. ``FLOOR_CLIENT``: httpx (its own pool), httpx-aiohttp (httpx on aiohttp's pool: the gateway's default) or
aiohttp. ``bench/overhead.py`` measures it beside the gateway and LiteLLM, under the same uvicorn (uvloop,
httptools), as the ceiling of this machine for a proxy written in Python: a target above it asks for another
runtime, not a better design.

    FLOOR_UPSTREAM=http://127.0.0.1:8001 python -m uvicorn bench.python_floor:app
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from httpx_aiohttp import AiohttpTransport

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8001")
CLIENT = os.environ.get("FLOOR_CLIENT", "httpx")  # httpx | httpx-aiohttp | aiohttp
JSON = {"content-type": "application/json"}
_client: Any = None


async def _forward(path: str, body: bytes) -> tuple[int, bytes]:
    if CLIENT == "aiohttp":
        async with _client.post(UPSTREAM + path, data=body, headers=JSON) as response:
            return response.status, await response.read()
    response = await _client.post(path, content=body, headers=JSON)
    return response.status_code, response.content


async def _start() -> None:
    global _client
    if CLIENT == "aiohttp":
        import aiohttp

        _client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        return
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    transport = (
        AiohttpTransport(limits=limits) if CLIENT == "httpx-aiohttp" else httpx.AsyncHTTPTransport(limits=limits)
    )
    _client = httpx.AsyncClient(base_url=UPSTREAM, transport=transport, timeout=60)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await _start()
                await send({"type": "lifespan.startup.complete"})
        if _client is not None:
            await (_client.close() if CLIENT == "aiohttp" else _client.aclose())
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, content = await _forward(scope["path"], body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
