"""Call a model's providers in order until one answers.

Fail over on connection errors, timeouts, 5xx, 429, 401/403 (our key's problem) and malformed
answers. A 4xx caused by the client's own request (400, 404, 413, 422) is not the provider's
fault: it goes back to the client as ``UpstreamRejected`` without trying the next provider.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from app.catalog.service import Catalog, ModelConfig
from app.errors import GatewayError, ProviderUnavailable

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


class _Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _call_once(
    http: httpx.AsyncClient, *, url: str, api_key: str, payload: dict[str, Any], timeout: float
) -> dict[str, Any]:
    try:
        # httpx's timeouts are per operation; this bounds the whole call (a slow drip, an in-process app).
        async with asyncio.timeout(timeout):
            response = await http.post(url, json=payload, headers={"Authorization": f"Bearer {api_key}"})
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise _Failed("timeout") from exc
    except httpx.TransportError as exc:
        raise _Failed(f"connection error: {type(exc).__name__}") from exc
    if response.status_code in CLIENT_FAULT_STATUSES:
        raise UpstreamRejected(
            f"the provider rejected the request ({response.status_code})",
            upstream_status=response.status_code,
            upstream_body=response.text[:2000],
        )
    if response.status_code != 200:
        raise _Failed(f"HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError as exc:
        raise _Failed("malformed JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise _Failed("malformed response: no choices")
    return body


async def chat_completion(
    http: httpx.AsyncClient, *, catalog: Catalog, model: ModelConfig, payload: dict[str, Any], timeout: float
) -> UpstreamResponse:
    """POST the chat request to each provider of ``model`` in order; ``ProviderUnavailable`` if all fail."""
    attempts: list[Attempt] = []
    for route in model.providers:
        provider = catalog.provider(route.provider)
        api_key = provider.resolve_key()
        if not api_key:
            attempts.append(Attempt(provider.name, f"no API key ({provider.api_key_env} is not set)"))
            continue
        started = time.perf_counter()
        try:
            body = await _call_once(
                http,
                url=provider.base_url.rstrip("/") + "/chat/completions",
                api_key=api_key,
                payload={**payload, "model": route.model or model.id},
                timeout=timeout,
            )
        except _Failed as failure:
            attempts.append(Attempt(provider.name, failure.reason))
            continue
        attempts.append(Attempt(provider.name, "ok"))
        latency_ms = int((time.perf_counter() - started) * 1000)
        return UpstreamResponse(provider.name, body, latency_ms, tuple(attempts))
    raise ProviderUnavailable(
        f"no provider could serve model {model.id!r}",
        model=model.id,
        attempts=[{"provider": a.provider, "outcome": a.outcome} for a in attempts],
    )
