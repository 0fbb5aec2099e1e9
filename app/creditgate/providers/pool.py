"""Call a model's providers in catalog order until one answers, behind a circuit breaker per provider.

Each provider speaks one wire protocol; its ``Adapter`` builds the request and parses the answer, so
this loop never looks at a protocol. Fail over on connection errors, timeouts, 5xx, 429, 401/403 (our
key's problem) and malformed answers. A 4xx caused by the client's own request (400, 404, 413, 422) is
not the provider's fault: it goes back to the client as ``UpstreamRejected`` without trying the next
provider. Every failure is kept, so "all failed" lists each provider's reason.

Breakers (purgatory): a provider's circuit opens after ``threshold`` consecutive failures, is
skipped while open, lets one probe through after ``cooldown`` seconds (half-open) and closes
when the probe succeeds. One circuit serves every tenant, so it counts only what the provider did
(``_Failed`` raised by ``send``: 5xx, timeouts, connection errors, malformed answers, the operator
key's 401/403/429) and nothing a caller can cause:

- a request that cannot be built or encoded is dealt with before the circuit is entered (a body JSON
  cannot encode is ``InvalidRequest``; a protocol that cannot serve the request is skipped);
- a 4xx the provider blames on the request, a caller going away mid-call or any other exception is
  neutral: it neither counts as a failure nor as the success that would reset the count or close a
  half-open circuit;
- BYOK traffic (the caller's own key) never enters the operator's circuit. The vendor refusing the
  caller's key (401/403) is ``ByokKeyRejected`` and a 429 on it ``ByokRateLimited``, both the caller's
  to fix; the operator's key is never tried in its place;
- token counts (free, answered with the estimate when no provider counts) respect an open circuit but
  never feed one, and each caller may ask the vendor only a small burst of them (``CallerLimiter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx
from httpx_sse import EventSource
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from creditgate.catalog.service import Catalog, ModelConfig, ProviderConfig
from creditgate.errors import GatewayError, InvalidRequest, ProviderUnavailable
from creditgate.providers import ADAPTERS
from creditgate.providers.base import Adapter, ChatCall, Completion, Delta, Kind, Malformed
from creditgate.providers.transport import Answer, Post

if TYPE_CHECKING:
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

CLIENT_FAULT_STATUSES = frozenset({400, 404, 413, 422})
KEY_REFUSED_STATUSES = frozenset({401, 403})
T = TypeVar("T")


class UpstreamRejected(GatewayError):
    """The provider refused the client's request as invalid (4xx); nothing was served."""

    status_code = 400
    error_type = "upstream_rejected"


class ByokKeyRejected(GatewayError):
    """The provider refused the caller's own key (BYOK, 401/403): theirs to replace or delete."""

    status_code = 400
    error_type = "byok_key_rejected"


class ByokRateLimited(GatewayError):
    """The provider rate-limited the caller's own key (BYOK, 429); ``Retry-After`` is passed on."""

    status_code = 429
    error_type = "byok_rate_limited"

    def __init__(self, message: str, *, retry_after: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": self.retry_after} if self.retry_after else None


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
    """The provider's fault: the only exception a circuit counts."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


@contextlib.asynccontextmanager
async def _provider_faults() -> AsyncIterator[None]:
    """A timeout or a connection error, on either seam, is the provider's fault (``_Failed``)."""
    try:
        yield
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise _Failed("timeout") from exc
    except httpx.TransportError as exc:
        raise _Failed(f"connection error: {type(exc).__name__}") from exc


def _classify(status: int, headers: Mapping[str, str], body_text: str) -> None:
    """Raise for a non-200 answer: the client's fault (no failover) or the provider's (failover)."""
    if status in CLIENT_FAULT_STATUSES:
        raise UpstreamRejected(
            f"the provider rejected the request ({status})", upstream_status=status, upstream_body=body_text[:2000]
        )
    if status != 200:
        raise _Failed(f"HTTP {status}", status=status, retry_after=headers.get("retry-after"))


def _byok_refusal(provider: ProviderConfig, api_key: str, failure: _Failed) -> GatewayError | None:
    """The error a BYOK caller gets when the vendor refused or rate-limited their own key, else ``None``."""
    if failure.status in KEY_REFUSED_STATUSES:
        return ByokKeyRejected(
            f"the provider {provider.name!r} refused your own API key for it (…{api_key[-4:]}, HTTP {failure.status}); "
            f"replace it with POST /user/provider-keys, or delete it (DELETE /user/provider-keys/{provider.name}) to "
            "be served with the gateway's key at the usual price",
            provider=provider.name,
            key_last4=api_key[-4:],
            upstream_status=failure.status,
        )
    if failure.status == 429:
        return ByokRateLimited(
            f"the provider {provider.name!r} rate-limited your own API key for it (…{api_key[-4:]}); retry later",
            retry_after=failure.retry_after,
            provider=provider.name,
            key_last4=api_key[-4:],
            upstream_status=429,
        )
    return None


class CallerLimiter:
    """A token bucket per caller, in this process: at most ``burst`` at once, refilled at ``per_minute``.

    It counts vendor calls over clock seconds, never credits: no money passes through its floats.

    Idle callers' buckets (full again) are dropped once more than ``max_callers`` are kept, so memory stays
    bounded by the callers active within about ``burst / per_minute`` minutes.
    """

    def __init__(
        self, *, burst: int, per_minute: float, max_callers: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.rate, self.max_callers, self.clock = float(burst), per_minute / 60.0, max_callers, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller → (tokens, clock time of that count)

    def take(self, caller: str) -> bool:
        """Whether ``caller`` may go to the vendor now (and if so, one token less)."""
        now = self.clock()
        tokens, at = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_callers:
            full = [c for c, (t, a) in self._buckets.items() if t + (now - a) * self.rate >= self.burst]
            for idle in full:
                del self._buckets[idle]
        return allowed


# (adapter, upstream model) → (path, body), or None when this protocol cannot serve the request.
Build = Callable[[Adapter, str], "tuple[str, dict[str, Any]] | None"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request to a provider, encoded: what either seam of ``providers.transport`` sends."""

    url: str
    headers: dict[str, str]
    content: bytes


# (provider, upstream model, key) → the encoded request, or None when the provider's protocol cannot serve it.
Prepare = Callable[[ProviderConfig, str, str], "Outgoing | None"]
# (provider, encoded request) → the parsed answer; raises ``_Failed`` for the provider's faults only.
Send = Callable[[ProviderConfig, Outgoing], Awaitable[T]]


class ProviderPool:
    """The upstream HTTP client, the catalog's providers and one breaker per provider."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        catalog: Catalog,
        *,
        threshold: int = 5,
        cooldown: float = 30.0,
        count_burst: int = 10,
        counts_per_minute: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        post: Post | None = None,
    ) -> None:
        self._http = http
        # ``http``'s own transport, given again: requests built by ``http`` go straight to it, without the client's
        # per-request work this pool never uses (auth flows, redirects, cookies, event hooks): ~4 % of a request.
        self.transport = transport
        # The same transport's seam for whole answers (providers/transport.py), when it has one.
        self.post = post
        self._urls: dict[tuple[str, str], str] = {}
        self.catalog = catalog
        self.breakers = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=cooldown)
        # Token counts are free to the caller and cost the operator's vendor rate limit: a few per caller.
        self.count_limiter = CallerLimiter(burst=count_burst, per_minute=counts_per_minute)

    @property
    def http(self) -> httpx.AsyncClient:
        """The upstream client; one set here (a test's) is used whole, its transport included."""
        return self._http

    @http.setter
    def http(self, client: httpx.AsyncClient) -> None:
        self._http, self.transport, self.post = client, None, None

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

    def _url(self, provider: ProviderConfig, path: str) -> str:
        """A provider's endpoint, joined once."""
        key = (provider.base_url, path)
        if (url := self._urls.get(key)) is None:
            url = self._urls[key] = provider.base_url.rstrip("/") + path
        return url

    def _encode(self, provider: ProviderConfig, path: str, payload: Any, headers: dict[str, str]) -> Outgoing:
        """The request as bytes (JSON as httpx encodes it); a body JSON cannot encode is the client's (400), found
        before any circuit."""
        try:
            content = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                "the request holds text that cannot be encoded (a lone UTF-16 surrogate such as \\ud800)"
            ) from exc
        except ValueError as exc:  # json's allow_nan=False: NaN or Infinity
            raise InvalidRequest("the request holds a number JSON cannot carry (NaN or Infinity)") from exc
        if not all(value.isascii() and value.isprintable() for value in headers.values()):  # a key with é or CRLF
            raise InvalidRequest(
                f"the API key for provider {provider.name!r} holds characters an HTTP header cannot carry "
                "(only printable ASCII)"
            )
        return Outgoing(self._url(provider, path), headers | {"Content-Type": "application/json"}, content)

    async def _guarded(self, provider: str, run: Callable[[], Awaitable[T]], *, feed: bool) -> T:
        """``run()`` behind the provider's circuit (``OpenedState`` while it is open). Only ``_Failed`` counts
        as a failure and only a return as a success; anything else leaves the circuit as it was. With
        ``feed=False`` the circuit is only consulted: an open one is skipped, the outcome never recorded."""
        breaker = await self.breakers.get_breaker(provider)
        context = breaker.context
        if not feed:
            opened_at = context.opened_at
            if context.state == "opened" and opened_at is not None and time.time() <= opened_at + context.ttl:
                raise OpenedState(provider)
            return await run()
        try:
            context.handle_new_request()  # raises OpenedState while open; past the cooldown: half-open
            try:
                result = await run()
            except _Failed as failure:
                context.handle_exception(failure)
                raise
            context.handle_end_request()
            return result
        finally:
            await _publish(breaker)

    async def _try_each(
        self,
        model: ModelConfig,
        user_keys: Mapping[str, str],
        prepare: Prepare,
        send: Send[T],
        *,
        feed_breakers: bool = True,
    ) -> tuple[T, ProviderConfig, tuple[Attempt, ...], bool]:
        attempts: list[Attempt] = []
        routes, byok = self._routes(model, user_keys)
        for provider, upstream_model, api_key in routes:
            if not api_key:
                attempts.append(Attempt(provider.name, f"no API key ({provider.api_key_env} is not set)"))
                continue
            # Building and encoding happen before any circuit: nothing of it reached the provider.
            request = prepare(provider, upstream_model or model.id, api_key)
            if request is None:
                attempts.append(Attempt(provider.name, f"a {provider.kind!r} provider cannot serve this request"))
                continue
            try:
                if byok:  # the caller's own key: never the operator's circuit
                    result = await send(provider, request)
                else:
                    result = await self._guarded(provider.name, partial(send, provider, request), feed=feed_breakers)
            except OpenedState:
                attempts.append(Attempt(provider.name, "circuit open"))
                continue
            except _Failed as failure:
                if byok and (refusal := _byok_refusal(provider, api_key, failure)) is not None:
                    raise refusal from failure
                attempts.append(Attempt(provider.name, failure.reason))
                continue
            attempts.append(Attempt(provider.name, "ok"))
            return result, provider, tuple(attempts), byok
        raise ProviderUnavailable(
            f"no provider could serve model {model.id!r}",
            model=model.id,
            attempts=[{"provider": a.provider, "outcome": a.outcome} for a in attempts],
        )

    async def _send(self, out: Outgoing, *, timeout: float, stream: bool) -> httpx.Response:
        """Send an encoded request through httpx; a timeout or a connection error is the provider's fault."""
        request = self.http.build_request("POST", out.url, content=out.content, headers=out.headers)
        # httpx's timeouts are per operation; this bounds the whole call (slow drip, in-process app).
        async with _provider_faults(), asyncio.timeout(timeout):
            if self.transport is None:
                return await self.http.send(request, stream=stream)
            response = await self.transport.handle_async_request(request)
            response.request = request
            if not stream:
                try:
                    await response.aread()
                except BaseException:
                    await response.aclose()
                    raise
            return response

    async def _whole(self, out: Outgoing, *, timeout: float) -> Answer:
        """A whole answer: through the transport's ``Post`` when it has one, else through httpx."""
        if self.post is None:
            response = await self._send(out, timeout=timeout, stream=False)
            return Answer(response.status_code, response.headers, response.content)
        async with _provider_faults(), asyncio.timeout(timeout):
            return await self.post(out.url, out.headers, out.content)

    async def _post(
        self,
        *,
        model: ModelConfig,
        build: Build,
        parse: Callable[[Adapter, Any], T],
        timeout: float,
        user_keys: Mapping[str, str],
        feed_breakers: bool = True,
    ) -> Served[T]:
        """POST what the provider's adapter builds; the first answer its adapter can parse wins."""

        def prepare(provider: ProviderConfig, upstream_model: str, api_key: str) -> Outgoing | None:
            adapter = ADAPTERS[provider.kind]
            built = build(adapter, upstream_model)
            if built is None:
                return None
            path, payload = built
            return self._encode(provider, path, payload, adapter.headers(api_key))

        async def send(provider: ProviderConfig, out: Outgoing) -> T:
            adapter = ADAPTERS[provider.kind]
            answer = await self._whole(out, timeout=timeout)
            if answer.status != 200:
                _classify(answer.status, answer.headers, answer.content.decode(errors="replace"))
            try:
                return parse(adapter, json.loads(answer.content))
            except ValueError as exc:
                raise _Failed("malformed JSON") from exc
            except Malformed as exc:
                raise _Failed(f"malformed response: {exc}") from exc

        started = time.perf_counter()
        value, provider, attempts, byok = await self._try_each(
            model, user_keys, prepare, send, feed_breakers=feed_breakers
        )
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

    async def count_tokens(self, *, model: ModelConfig, call: ChatCall, timeout: float, caller: str) -> Served[int]:
        """The prompt's input tokens as counted by the first provider that can count them, with the operator's
        keys. ``ProviderUnavailable`` when none can (the caller answers with its estimate), also once ``caller``
        has used up its share of counts; a count's failure never counts against a circuit (an open one is
        skipped): the estimate stands in for it, paid traffic does not."""
        if not self.count_limiter.take(caller):
            raise ProviderUnavailable(
                f"{caller} asked for more token counts than the vendor is asked for per caller",
                model=model.id,
                attempts=[],
            )
        return await self._post(
            model=model,
            build=lambda adapter, name: adapter.count_request(call, model=name),
            parse=lambda adapter, body: adapter.parse_count(body),
            timeout=timeout,
            user_keys={},
            feed_breakers=False,
        )

    async def stream(
        self, *, model: ModelConfig, call: ChatCall, timeout: float, user_keys: Mapping[str, str]
    ) -> UpstreamStream:
        """Open a streaming answer on the first provider that answers 200; failover happens before any byte."""

        def prepare(provider: ProviderConfig, upstream_model: str, api_key: str) -> Outgoing:
            adapter = ADAPTERS[provider.kind]
            path, payload = adapter.chat_request(call, model=upstream_model, stream=True)
            return self._encode(provider, path, payload, adapter.headers(api_key))

        async def open_one(provider: ProviderConfig, out: Outgoing) -> httpx.Response:
            response = await self._send(out, timeout=timeout, stream=True)
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                await response.aclose()
                _classify(response.status_code, response.headers, text)
            return response

        response, provider, attempts, byok = await self._try_each(model, user_keys, prepare, open_one)
        return UpstreamStream(provider.name, provider.kind, response, attempts, byok)


async def _publish(breaker: AsyncCircuitBreaker) -> None:
    """Hand the circuit's pending events (state changes, failure counts) to its bus, as purgatory's exit does."""
    context = breaker.context
    while context.messages:
        await breaker.messagebus.handle(context.messages.pop(0), breaker.uow)
