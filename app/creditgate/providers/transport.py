"""The connection pool every provider call goes through (``CREDITGATE_UPSTREAM_CLIENT``).

Two seams. Every call can go through an httpx transport (``handle_async_request``): what tests and the harness's
in-process fakes plug in, and what streams use. A whole answer (no stream) can also go through ``Post``: the URL,
headers and encoded body in, status, headers and body out. aiohttp's pool offers it (``AiohttpPool.post``), which
skips building an httpx request and response around aiohttp's for every call: the Python floor's forwarder gets
~2× the requests per second from bare aiohttp as from httpx on aiohttp (``python -m bench.overhead``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from yarl import URL

from creditgate.settings import Settings


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's whole answer. ``headers`` look up case-insensitively; ``headers_at``: ``time.perf_counter()``
    when they arrived (the upstream latency metric is time to headers, whichever seam)."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    headers_at: float = 0.0


# (URL, headers, encoded body) → the answer; raises httpx's transport errors, as a transport does.
Post = Callable[[str, Mapping[str, str], bytes], Awaitable[Answer]]
# A provider that does not accept the connection within this is failed over (both seams); the whole call is bounded
# by the pool (CREDITGATE_UPSTREAM_TIMEOUT_SECONDS).
CONNECT_TIMEOUT_SECONDS = 10.0


class AiohttpPool(AiohttpTransport):
    """httpx-aiohttp's transport. It maps most of aiohttp's errors to httpx's; the rest (a malformed status line is
    ``ClientResponseError``) become ``httpx.RemoteProtocolError``, as httpx's own pool raises, so the provider pool
    fails over on them instead of answering 500."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, URL] = {}  # yarl parses a URL string on every call
        # Not aiohttp's session default (300 s in all, 30 s to connect): the pool bounds the call.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def post(self, url: str, headers: Mapping[str, str], content: bytes) -> Answer:
        """A whole answer straight from aiohttp (module docstring), with the errors ``handle_async_request``
        raises. The pool bounds the call's time itself."""
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        if (target := self._urls.get(url)) is None:
            target = self._urls[url] = URL(url)
        try:
            with map_aiohttp_exceptions():
                async with self.client.post(
                    target, data=content, headers=headers, allow_redirects=False, compress=False, timeout=self._timeout
                ) as response:
                    headers_at = time.perf_counter()
                    return Answer(response.status, response.headers, await response.read(), headers_at)
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from exc


def providers_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The providers' connection pool: aiohttp's by default (bench/python_floor.py: 8× httpx's at c=32)."""
    limits = httpx.Limits(max_connections=settings.upstream_max_connections, max_keepalive_connections=None)
    if settings.upstream_client == "aiohttp":
        return AiohttpPool(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


def whole_post(transport: httpx.AsyncBaseTransport | None) -> Post | None:
    """The transport's ``Post`` for whole answers, if it has one (else the pool builds httpx requests)."""
    post: Post | None = getattr(transport, "post", None)
    return post
