"""Call a model's providers in order until one answers, behind a circuit breaker per provider.

Fail over on connection errors, timeouts, 5xx, 429, 401/403 (our key's problem) and malformed
answers. A 4xx caused by the client's own request (400, 404, 413, 422) is not the provider's
fault: it goes back to the client as ``UpstreamRejected`` without trying the next provider and
without counting against the provider's breaker.

Breakers (purgatory): a provider's circuit opens after ``threshold`` consecutive failures, is
skipped while open, lets one probe through after ``cooldown`` seconds (half-open) and closes
when the probe succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from creditgate.catalog.service import Catalog, ModelConfig, ProviderConfig
from creditgate.errors import GatewayError, ProviderUnavailable

CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})


class UpstreamRejected(GatewayError):
    """The provider refused the client's request as invalid (4xx); nothing was served."""

    status_code = 400
    error_type = "upstream_rejected"


@dataclass(frozen=True, slots=True)
class Attempt:
    provider: str
    outcome: str  # "ok" or why it failed


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    provider: str
    body: dict[str, Any]
    latency_ms: int
    attempts: tuple[Attempt, ...]
    byok: bool = False
    kind: str = "openai"


@dataclass(frozen=True, slots=True)
class UpstreamStream:
    provider: str
    response: httpx.Response  # open, status 200; the caller reads and closes it
    attempts: tuple[Attempt, ...]
    byok: bool = False


class _Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _headers(provider: ProviderConfig, api_key: str) -> dict[str, str]:
    if provider.kind == "anthropic":
        return {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {api_key}"}


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


Validator = Callable[[str, Any], bool]
Builder = Callable[[ProviderConfig], "tuple[str, dict[str, Any]] | None"]


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
        call: Callable[[ProviderConfig, str, str], Any],
    ) -> tuple[Any, str, tuple[Attempt, ...], bool]:
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
            return result, provider.name, tuple(attempts), byok
        raise ProviderUnavailable(
            f"no provider could serve model {model.id!r}",
            model=model.id,
            attempts=[{"provider": a.provider, "outcome": a.outcome} for a in attempts],
        )

    async def post_json(
        self,
        *,
        model: ModelConfig,
        build: Builder,
        timeout: float,
        valid: Validator,
        user_keys: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST what ``build(provider)`` returns to each provider in order; the first valid JSON answer wins.

        ``build`` returns ``(path, payload)`` for the provider's wire format, or ``None`` when that kind
        of provider cannot serve the request (it is skipped as a failed attempt).
        """

        async def call(provider: ProviderConfig, upstream_model: str, api_key: str) -> tuple[str, dict[str, Any]]:
            built = build(provider)
            if built is None:
                raise _Failed(f"a {provider.kind!r} provider cannot serve this request")
            path, payload = built
            try:
                # httpx's timeouts are per operation; this bounds the whole call (slow drip, in-process app).
                async with asyncio.timeout(timeout):
                    response = await self.http.post(
                        provider.base_url.rstrip("/") + path,
                        json={**payload, "model": upstream_model},
                        headers=_headers(provider, api_key),
                    )
            except (httpx.TimeoutException, TimeoutError) as exc:
                raise _Failed("timeout") from exc
            except httpx.TransportError as exc:
                raise _Failed(f"connection error: {type(exc).__name__}") from exc
            _classify(response, response.text)
            try:
                body = response.json()
            except ValueError as exc:
                raise _Failed("malformed JSON") from exc
            if not isinstance(body, dict) or not valid(provider.kind, body):
                raise _Failed("malformed response")
            return provider.kind, body

        started = time.perf_counter()
        (kind, body), name, attempts, byok = await self._try_each(model, user_keys or {}, call)
        latency = int((time.perf_counter() - started) * 1000)
        return UpstreamResponse(name, body, latency, attempts, byok, kind)

    async def open_stream(
        self,
        *,
        model: ModelConfig,
        path: str,
        payload: dict[str, Any],
        timeout: float,
        user_keys: Mapping[str, str] | None = None,
    ) -> UpstreamStream:
        """Open a streaming POST on the first provider that answers 200; failover happens before any byte."""

        async def call(provider: ProviderConfig, upstream_model: str, api_key: str) -> httpx.Response:
            if provider.kind != "openai":
                raise _Failed(f"provider kind {provider.kind!r} does not stream {path}")
            request = self.http.build_request(
                "POST",
                provider.base_url.rstrip("/") + path,
                json={**payload, "model": upstream_model},
                headers=_headers(provider, api_key),
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

        response, name, attempts, byok = await self._try_each(model, user_keys or {}, call)
        return UpstreamStream(name, response, attempts, byok)


def is_chat_completion(kind: str, body: Any) -> bool:
    return isinstance(body.get("choices"), list) and bool(body["choices"])


def openai_only(path: str, payload: dict[str, Any]) -> Builder:
    """A builder for requests only OpenAI-style providers serve."""
    return lambda provider: (path, payload) if provider.kind == "openai" else None
