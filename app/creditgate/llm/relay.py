"""The one metered relay behind every inference route: hold → provider → settle (or release).

Chat completions, messages and images all come through here, whichever protocol the client spoke and
whichever the serving provider speaks (``providers`` translates). The provider call never runs inside a
database transaction; ``Meter`` (metering.py) makes sure every hold is settled or released exactly once.

Charging rules (``billed`` is the only place they are written down)
- The upstream's ``usage`` prices the request. Without it: the gateway's estimate of the prompt plus
  the estimate of the text returned (a stream: the text delivered so far; none delivered → nothing).
  That covers a stream that ended without a usage event, was cut mid-way, or whose client went away.
- The hold bounds the cost up front: ``max_tokens`` at the output price plus the prompt's bound, which counts
  every part of the body the upstream receives (llm/bounds.py); a body it cannot bound is refused (400).
- A cost above the hold (an upstream that reports more than the bound) is charged from what the balance has left,
  never below zero; what even that cannot cover is recorded (``usage_records.unrecovered``, a metric).
- A stream renews its hold while it runs; a settle after the hold expired still charges the full price from
  the balance.
- Usage that is no token count (negative, fractional, ≥ 2³¹) is a malformed answer: a whole answer fails over
  (nothing charged), a stream is charged as one that sent no usage.
- Every provider failing, or a 4xx the provider blamed on the request: nothing charged.
- Images: the catalog's per-image price for each image returned.
- BYOK (the user's own key for the provider): 0 credits, usage still recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from creditgate.auth.service import Principal
from creditgate.catalog import pricing
from creditgate.catalog.service import Catalog, ModelConfig
from creditgate.db.models import utcnow
from creditgate.errors import InvalidRequest
from creditgate.llm.metering import Meter
from creditgate.providers import ADAPTERS
from creditgate.providers.base import ChatCall, Kind, Usage
from creditgate.quotas.service import period_end
from creditgate.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Relayed:
    """A whole answer in the client's protocol, and the headers that go with it."""

    body: Any
    headers: dict[str, str]
    charged: Decimal


@dataclass(frozen=True, slots=True)
class Streamed:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str]


def chat_model(catalog: Catalog, model_id: str, *, max_tokens: int | None) -> tuple[ModelConfig, int]:
    """The catalog model a chat request names and its output limit (the model's default when none is asked)."""
    model = catalog.model(model_id)
    if model.per_image is not None:
        raise InvalidRequest(f"{model.id} is an image model: use /v1/images/generations", param="model")
    limit = max_tokens or model.default_max_tokens
    if limit > model.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens {limit} exceeds {model.id}'s limit of {model.max_output_tokens}", param="max_tokens"
        )
    return model, limit


def billed(usage: Usage | None, *, prompt_estimate: int, text: str, streamed: bool) -> Usage:
    """The tokens a request is charged for (the charging rules above)."""
    if usage is not None:
        return usage
    if streamed and not text:
        return Usage(0, 0)
    return Usage(prompt_estimate, pricing.estimate_prompt_tokens([text]))


def _headers(meter: Meter, protocol: Kind, *, provider: str, charged: Decimal | None = None) -> dict[str, str]:
    """Request id, provider, credits charged and the plan's call quota, on every metered answer."""
    headers = {"X-Request-Id": meter.request_id, "X-Creditgate-Provider": provider}
    if charged is not None:
        headers["X-Creditgate-Credits-Charged"] = str(charged)
    if meter.admission is not None:  # None: an unlimited plan (or the counter was unreachable)
        limit, remaining = meter.admission.limit, max(meter.admission.limit - meter.admission.count, 0)
        reset = period_end(utcnow())
        headers |= {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(reset.timestamp())),
        }
        headers |= ADAPTERS[protocol].rate_limit_headers(limit=limit, remaining=remaining, reset=reset)
    return headers


async def complete(
    rt: Runtime, principal: Principal, model: ModelConfig, call: ChatCall, *, prompt_estimate: int
) -> Relayed:
    """A whole chat answer, rendered in the protocol the client spoke."""
    meter = await Meter.open(rt, principal, model, prompt_estimate=prompt_estimate, max_tokens=call.max_tokens)
    try:
        served = await rt.providers.complete(
            model=model, call=call, timeout=rt.settings.upstream_timeout_seconds, user_keys=meter.user_keys
        )
        answer = served.value
        usage = billed(answer.usage, prompt_estimate=prompt_estimate, text=answer.text, streamed=False)
        body = ADAPTERS[call.protocol].render_completion(
            replace(answer, usage=answer.usage or usage), model=model.id, call=call
        )
        charged = await meter.settle(
            charge=meter.price(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens),
            provider=served.provider,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_ms=served.latency_ms,
        )
    finally:
        await meter.release()  # no-op once settled
    return Relayed(body, _headers(meter, call.protocol, provider=served.provider, charged=charged), charged)


async def stream(
    rt: Runtime, principal: Principal, model: ModelConfig, call: ChatCall, *, prompt_estimate: int
) -> Streamed:
    """Open the upstream stream (failover happens before the first byte) and meter what flows through."""
    meter = await Meter.open(rt, principal, model, prompt_estimate=prompt_estimate, max_tokens=call.max_tokens)
    lease = _Lease(meter)
    try:
        upstream = await rt.providers.stream(
            model=model, call=call, timeout=rt.settings.upstream_timeout_seconds, user_keys=meter.user_keys
        )
    except BaseException:
        lease.end()
        await meter.release()
        raise
    lease.opened()
    writer = ADAPTERS[call.protocol].stream_writer(
        model=model.id, call=call, upstream=upstream.kind, prompt_estimate=prompt_estimate
    )
    started = time.perf_counter()

    async def settle(usage: Usage | None, delivered: list[str], outcome: str) -> Usage:
        """Charge what was delivered (``Meter.settle`` is shielded from cancellation), then let the upstream go."""
        tokens = billed(usage, prompt_estimate=prompt_estimate, text="".join(delivered), streamed=True)
        lease.end()
        try:
            await meter.settle(
                charge=meter.price(prompt_tokens=tokens.prompt_tokens, completion_tokens=tokens.completion_tokens),
                provider=upstream.provider,
                prompt_tokens=tokens.prompt_tokens,
                completion_tokens=tokens.completion_tokens,
                latency_ms=int((time.perf_counter() - started) * 1000),
                outcome=outcome,
            )
        finally:
            try:
                await upstream.aclose()
            except Exception:  # the charge stands; a connection that fails to close must not cost the stream its end
                log.warning("closing the stream from %s failed", upstream.provider, exc_info=True)
        return tokens

    async def relay() -> AsyncIterator[bytes]:
        delivered: list[str] = []
        usage: Usage | None = None
        done, settling = False, False
        closing = b""  # the upstream's own end-of-stream event, held back until the charge has committed
        lease.relaying()
        try:
            if opening := writer.start():
                yield opening
            try:
                async for delta in upstream.deltas():
                    delivered.append(delta.text)
                    usage = delta.usage or usage
                    out = writer.write(delta)
                    if delta.done:
                        done, closing = True, out
                        break
                    if out:
                        yield out
            except Exception:
                log.warning("stream from %s broke off", upstream.provider, exc_info=True)
            # The end of the stream is the client's receipt: it is sent only once the charge has committed, so a
            # worker killed between the two leaves a client that saw a broken stream, never a free answer.
            settling = True
            outcome = "ok" if done else "ok_no_done" if usage else "cut"
            tokens = await settle(usage, delivered, outcome)
            if tail := closing + writer.finish(tokens, complete=done or usage is not None):
                yield tail
        finally:
            if not settling:  # the client went away (cancellation): charge what was delivered
                await settle(usage, delivered, "client_disconnected")

    headers = _headers(meter, call.protocol, provider=upstream.provider) | {"Cache-Control": "no-cache"}
    return Streamed(relay(), headers)


class _Lease:
    """A stream renews its hold while it runs — a third of the TTL at a time, from a task of its own, so a silent
    upstream (a model thinking before its first token) keeps it too. The sweeper then never takes the hold of a
    live stream and lets the same credits be spent again; only a stream whose worker died loses its hold, and a
    settle after that still charges the full price from the balance. Renewal stops when the stream settles, or
    if the client never starts reading the stream one period after it opened (the hold then expires as before).
    """

    def __init__(self, meter: Meter) -> None:
        self.meter, self.phase, self.since = meter, "opening", time.monotonic()
        self.task: asyncio.Task[None] | None = None
        if meter.hold_id is not None:
            self.task = asyncio.create_task(self._renew(meter.rt.settings.hold_ttl_seconds / 3))

    def opened(self) -> None:
        self.phase, self.since = "opened", time.monotonic()

    def relaying(self) -> None:
        self.phase = "relaying"

    def end(self) -> None:
        self.phase = "done"
        if self.task is not None:
            self.task.cancel()

    async def _renew(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self.phase == "done" or (self.phase == "opened" and time.monotonic() - self.since >= every):
                return
            try:
                if not await self.meter.renew():
                    return
            except Exception:  # the database is away: the settle's retries and the late-settle rule take over
                log.warning("renewing hold %s failed", self.meter.hold_id, exc_info=True)


async def images(
    rt: Runtime, principal: Principal, model: ModelConfig, payload: Mapping[str, Any], *, n: int
) -> Relayed:
    """Generated images (at most ``n``), each charged the model's per-image price."""
    meter = await Meter.open(rt, principal, model, prompt_estimate=0, images=n)
    try:
        served = await rt.providers.images(
            model=model, payload=payload, timeout=rt.settings.upstream_timeout_seconds, user_keys=meter.user_keys
        )
        data = served.value[:n]
        charged = await meter.settle(
            charge=meter.price(prompt_tokens=0, completion_tokens=0, images=len(data)),
            provider=served.provider,
            prompt_tokens=0,
            completion_tokens=len(data),  # the usage record counts an image as one completion unit
            latency_ms=served.latency_ms,
        )
    finally:
        await meter.release()
    return Relayed(data, _headers(meter, "openai", provider=served.provider, charged=charged), charged)
