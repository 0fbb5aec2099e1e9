"""Provider calls seen from the outside: a timing transport under the upstream HTTP client, and the breakers'
state changes (purgatory listeners) — nothing inside ``providers/`` knows about metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from creditgate.catalog.service import Catalog
from creditgate.observability import context, metrics
from creditgate.providers.transport import Answer, Post, whole_post


class TimedTransport(httpx.AsyncBaseTransport):
    """Wraps the upstream transport: time to response headers and status per provider, and the provider (the last
    one tried) noted on the request in flight. ``post``: the inner transport's seam for whole answers, timed the
    same way, when it has one."""

    post: Post

    def __init__(self, inner: httpx.AsyncBaseTransport, catalog: Catalog) -> None:
        self.inner = inner
        self._post = whole_post(inner)
        if self._post is not None:
            self.post = self._timed_post
        # Longest prefix first, so a provider at /v1/x wins over one at /v1.
        self._prefixes = sorted(
            ((p.base_url.rstrip("/"), p.name) for p in catalog.providers), key=lambda item: -len(item[0])
        )

    def provider_of(self, url: str) -> str:
        for prefix, name in self._prefixes:
            if url.startswith(prefix):
                return name
        return "other"

    def _begin(self, url: str) -> str:
        provider = self.provider_of(url)
        info = context.current()
        if info is not None:
            info.provider = provider
        return provider

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        provider = self._begin(str(request.url))
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            metrics.UPSTREAM_REQUESTS.labels(provider, "error").inc()
            raise
        _answered(provider, response.status_code, time.perf_counter() - started)
        return response

    async def _timed_post(self, url: str, headers: Mapping[str, str], content: bytes) -> Answer:
        assert self._post is not None
        provider = self._begin(url)
        started = time.perf_counter()
        try:
            answer = await self._post(url, headers, content)
        except BaseException:
            metrics.UPSTREAM_REQUESTS.labels(provider, "error").inc()
            raise
        _answered(provider, answer.status, (answer.headers_at or time.perf_counter()) - started)
        return answer

    async def aclose(self) -> None:
        await self.inner.aclose()


def _answered(provider: str, status: int, seconds: float) -> None:
    metrics.UPSTREAM_SECONDS.labels(provider).observe(seconds)
    metrics.UPSTREAM_REQUESTS.labels(provider, str(status)).inc()


def watch_breakers(breakers: Any, catalog: Catalog) -> None:
    """Mirror every provider circuit's state into ``creditgate_breaker_state`` (all start closed)."""
    for provider in catalog.providers:
        metrics.breaker_changed(provider.name, "closed")

    def hook(name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed":
            metrics.breaker_changed(name, str(event.state))

    breakers.add_listener(hook)
