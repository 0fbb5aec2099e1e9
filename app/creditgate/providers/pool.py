"""Call a model's providers in catalog order until one answers, behind a circuit breaker per provider.

Each provider speaks one wire protocol; its ``Adapter`` builds the request and parses the answer, so
this loop never looks at a protocol. Fail over on connection errors, timeouts, 5xx, 429, 401/403 (our
key's problem) and malformed answers. A 4xx caused by the client's own request (400, 404, 413, 422) is
not the provider's fault: it goes back to the client as ``UpstreamRejected`` without trying the next
provider and without counting against the provider's breaker. Every failure is kept, so "all failed"
lists each provider's reason.

Breakers (purgatory): a provider's circuit opens after ``threshold`` consecutive failures, is
skipped while open, lets one probe through after ``cooldown`` seconds (half-open) and closes
when the probe succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from creditgate.catalog.service import Catalog, ModelConfig, ProviderConfig
from creditgate.errors import GatewayError, ProviderUnavailable
from creditgate.providers import ADAPTERS
from creditgate.providers.base import Adapter, ChatCall, Completion, Delta, Kind, Malformed

CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})
T = TypeVar("T")


class UpstreamRejected(GatewayError):
    """The provider refused the client's request as invalid (4xx); nothing was served."""

    status_code = 400
    error_type = "upstream_rejected"


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    outcome: str  # "ok" or why it failed


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    """What the first provider that answered returned, parsed by its adapter."""

    provider: str
    kind: Kind
    value: T
    latency_ms: int
    attempts: tuple[Attempt, ...]
    byok: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamStream:
    provider: str
    kind: Kind
    response: httpx.Response  # open, status 200; read it with ``deltas()``, then ``aclose()``
    attempts: tuple[Attempt, ...]
    byok: bool = False

    async def deltas(self) -> AsyncIterator[Delta]:
        """The stream's events, parsed by the provider's adapter (one SSE parser per protocol)."""
        parser = ADAPTERS[self.kind].stream_parser()
        async for event in EventSource(self.response).aiter_sse():
            for delta in parser.feed(event):
                yield delta

    async def aclose(self) -> None:
        await self.response.aclose()


class _Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _classify(response: httpx.Response, body_text: str) -> None:
    """Raise for a non-200 answer: the client's fault (no failover) or the provider's (failover)."""
    if response.status_code in CLIENT_FAULT_STATUSES:
        raise UpstreamRejected(
            f"the provider rejected the request ({response.status_code})",
            upstream_status=response.status_code,
            upstream_body=body_text[:2000],
        )
    if response.status_code != 200:
        raise _Failed(f"HTTP {response.status_code}")


# (adapter, upstream model) → (path, body), or None when this protocol cannot serve the request.
Build = Callable[[Adapter, str], "tuple[str, dict[str, Any]] | None"]


class ProviderPool:
    """The upstream HTTP client, the catalog's providers and one breaker per provider."""

    def __init__(
        self, http: httpx.AsyncClient, catalog: Catalog, *, threshold: int = 5, cooldown: float = 30.0
    ) -> None:
        self.http = http
        self.catalog = catalog
        self.breakers = AsyncCircuitBreakerFactory(
            default_threshold=threshold, default_ttl=cooldown, exclude=[UpstreamRejected]
        )

    async def state(self, provider: str) -> str:
        """closed | opened | half-opened."""
        return str((await self.breakers.get_breaker(provider)).context.state)

    def _routes(
        self, model: ModelConfig, user_keys: Mapping[str, str]
    ) -> tuple[list[tuple[ProviderConfig, str | None, str | None]], bool]:
        """(provider, upstream model, key) in order; only the user's own providers when they brought keys."""
        routes = [(self.catalog.provider(r.provider), r.model) for r in model.providers]
        own = [(p, m, user_keys[p.name]) for p, m in routes if p.name in user_keys]
        if own:
            return list(own), True
        return [(p, m, p.resolve_key()) for p, m in routes], False

    async def _try_each(
        self,
        model: ModelConfig,
        user_keys: Mapping[str, str],
        call: Callable[[ProviderConfig, str, str], Awaitable[T]],
    ) -> tuple[T, ProviderConfig, tuple[Attempt, ...], bool]:
        attempts: list[Attempt] = []
        routes, byok = self._routes(model, user_keys)
        for provider, upstream_model, api_key in routes:
            if not api_key:
                attempts.append(Attempt(provider.name, f"no API key ({provider.api_key_env} is not set)"))
                continue
            breaker = await self.breakers.get_breaker(provider.name)
            try:
                async with breaker:
                    result = await call(provider, upstream_model or model.id, api_key)
            except OpenedState:
                attempts.append(Attempt(provider.name, "circuit open"))
                continue
            except _Failed as failure:
                attempts.append(Attempt(provider.name, failure.reason))
                continue
            attempts.append(Attempt(provider.name, "ok"))
            return result, provider, tuple(attempts), byok
        raise ProviderUnavailable(
            f"no provider could serve model {model.id!r}",
            model=model.id,
            attempts=[{"provider": a.provider, "outcome": a.outcome} for a in attempts],
        )

    async def _post(
        self,
        *,
        model: ModelConfig,
        build: Build,
        parse: Callable[[Adapter, Any], T],
        timeout: float,
        user_keys: Mapping[str, str],
    ) -> Served[T]:
        """POST what the provider's adapter builds; the first answer its adapter can parse wins."""

        async def call(provider: ProviderConfig, upstream_model: str, api_key: str) -> T:
            adapter = ADAPTERS[provider.kind]
            built = build(adapter, upstream_model)
            if built is None:
                raise _Failed(f"a {provider.kind!r} provider cannot serve this request")
            path, payload = built
            try:
                # httpx's timeouts are per operation; this bounds the whole call (slow drip, in-process app).
                async with asyncio.timeout(timeout):
                    response = await self.http.post(
                        provider.base_url.rstrip("/") + path, json=payload, headers=adapter.headers(api_key)
                    )
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise _Failed("timeout") from exc
            except httpx.TransportError as exc:
                raise _Failed(f"connection error: {type(exc).__name__}") from exc
            _classify(response, response.text)
            try:
                return parse(adapter, response.json())
            except ValueError as exc:
                raise _Failed("malformed JSON") from exc
            except Malformed as exc:
                raise _Failed(f"malformed response: {exc}") from exc

        started = time.perf_counter()
        value, provider, attempts, byok = await self._try_each(model, user_keys, call)
        latency = int((time.perf_counter() - started) * 1000)
        return Served(provider.name, provider.kind, value, latency, attempts, byok)

    async def complete(
        self, *, model: ModelConfig, call: ChatCall, timeout: float, user_keys: Mapping[str, str]
    ) -> Served[Completion]:
        """One whole chat answer, in whichever protocol the serving provider speaks."""
        return await self._post(
            model=model,
            build=lambda adapter, name: adapter.chat_request(call, model=name, stream=False),
            parse=lambda adapter, body: adapter.parse_completion(body),
            timeout=timeout,
            user_keys=user_keys,
        )

    async def images(
        self, *, model: ModelConfig, payload: Mapping[str, Any], timeout: float, user_keys: Mapping[str, str]
    ) -> Served[list[dict[str, Any]]]:
        """Generated images (each a dict with ``url`` or ``b64_json``) from the first provider that has them."""
        return await self._post(
            model=model,
            build=lambda adapter, name: adapter.images_request(payload, model=name),
            parse=lambda adapter, body: adapter.parse_images(body),
            timeout=timeout,
            user_keys=user_keys,
        )

    async def count_tokens(
        self, *, model: ModelConfig, call: ChatCall, timeout: float, user_keys: Mapping[str, str]
    ) -> Served[int]:
        """The prompt's input tokens as counted by the first provider that can count them."""
        return await self._post(
            model=model,
            build=lambda adapter, name: adapter.count_request(call, model=name),
            parse=lambda adapter, body: adapter.parse_count(body),
            timeout=timeout,
            user_keys=user_keys,
        )

    async def stream(
        self, *, model: ModelConfig, call: ChatCall, timeout: float, user_keys: Mapping[str, str]
    ) -> UpstreamStream:
        """Open a streaming answer on the first provider that answers 200; failover happens before any byte."""

        async def open_one(provider: ProviderConfig, upstream_model: str, api_key: str) -> httpx.Response:
            adapter = ADAPTERS[provider.kind]
            path, payload = adapter.chat_request(call, model=upstream_model, stream=True)
            request = self.http.build_request(
                "POST", provider.base_url.rstrip("/") + path, json=payload, headers=adapter.headers(api_key)
            )
            try:
                async with asyncio.timeout(timeout):
                    response = await self.http.send(request, stream=True)
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise _Failed("timeout") from exc
            except httpx.TransportError as exc:
                raise _Failed(f"connection error: {type(exc).__name__}") from exc
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                await response.aclose()
                _classify(response, text)
            return response

        response, provider, attempts, byok = await self._try_each(model, user_keys, open_one)
        return UpstreamStream(provider.name, provider.kind, response, attempts, byok)
