"""The connection pool every provider call goes through (``CREDITGATE_UPSTREAM_CLIENT``)."""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from creditgate.settings import Settings


class AiohttpPool(AiohttpTransport):
    """httpx-aiohttp's transport. It maps most of aiohttp's errors to httpx's; the rest (a malformed status line is
    ``ClientResponseError``) become ``httpx.RemoteProtocolError``, as httpx's own pool raises, so the provider pool
    fails over on them instead of answering 500."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc


def providers_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The providers' connection pool: aiohttp's by default (bench/python_floor.py: 8× httpx's at c=32)."""
    limits = httpx.Limits(max_connections=settings.upstream_max_connections, max_keepalive_connections=None)
    if settings.upstream_client == "aiohttp":
        return AiohttpPool(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)
