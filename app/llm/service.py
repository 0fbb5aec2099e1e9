"""One chat request, straight down: price → hold → provider → settle (or release) → usage record.

The provider call never runs inside a database transaction. If anything between hold and
settle fails — the providers, a bug, the client going away — the hold is released in a shielded
block, and the sweeper releases it anyway if the process dies.

Charging rule (non-streaming): the upstream ``usage`` prices the request; without ``usage`` the
gateway charges its own estimate of the prompt plus the returned text. The charge never exceeds
the hold, which was the most the client agreed to spend (``max_tokens`` at the output price).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from pydantic import ValidationError

from app.auth.service import Principal
from app.catalog import pricing
from app.db.models import UsageRecord
from app.errors import InsufficientCredits, InvalidRequest, ProviderUnavailable
from app.ledger import service as ledger
from app.llm.schemas import ChatCompletionRequest, ChatCompletionResponse
from app.money import to_hundredths
from app.providers import router
from app.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatResult:
    response: ChatCompletionResponse
    request_id: str
    charged: Decimal
    provider: str


async def chat_completion(rt: Runtime, principal: Principal, request: ChatCompletionRequest) -> ChatResult:
    if request.stream:
        raise InvalidRequest("stream=true is not supported by this gateway yet; send stream=false")
    model = rt.catalog.model(request.model)
    max_tokens = request.output_limit() or model.default_max_tokens
    if max_tokens > model.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens {max_tokens} exceeds {model.id}'s limit of {model.max_output_tokens}",
            param="max_tokens",
        )
    prompt_estimate = pricing.estimate_prompt_tokens([m.text() for m in request.messages])
    request_id = uuid.uuid4().hex
    price = {"margin": rt.settings.margin, "credit_value_usd": rt.settings.credit_value_usd}

    async with rt.sessionmaker() as session, session.begin():
        increment = await pricing.current_increment(session, default=rt.settings.default_credit_increment)
        worst_case = pricing.credits_for(
            model, prompt_tokens=prompt_estimate, completion_tokens=max_tokens, increment=increment, **price
        )
        try:
            hold = await ledger.place_hold(
                session,
                account_id=principal.account_id,
                amount=worst_case,
                request_id=request_id,
                ttl=timedelta(seconds=rt.settings.hold_ttl_seconds),
            )
        except InsufficientCredits as exc:
            balance = Decimal(exc.extra["balance"])
            exc.extra["max_affordable_tokens"] = pricing.max_affordable_tokens(
                model, balance=balance, prompt_tokens=prompt_estimate, increment=increment, **price
            )
            raise
    hold_id = hold.id

    settled = False
    try:
        payload = request.model_dump(exclude_none=True)
        payload["max_tokens"] = max_tokens
        payload.pop("max_completion_tokens", None)
        upstream = await router.chat_completion(
            rt.http, catalog=rt.catalog, model=model, payload=payload, timeout=rt.settings.upstream_timeout_seconds
        )
        try:
            response = ChatCompletionResponse.model_validate({**upstream.body, "model": model.id})
        except ValidationError as exc:
            raise ProviderUnavailable(
                f"provider {upstream.provider!r} sent a response that is not a chat completion",
                model=model.id,
                attempts=[{"provider": upstream.provider, "outcome": "malformed response"}],
            ) from exc
        if response.usage is not None:
            prompt_tokens, completion_tokens = response.usage.prompt_tokens, response.usage.completion_tokens
        else:
            prompt_tokens = prompt_estimate
            completion_tokens = pricing.estimate_prompt_tokens([c.message.content or "" for c in response.choices])
        charge = pricing.credits_for(
            model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            increment=increment,
            **price,
        )
        async with rt.sessionmaker() as session, session.begin():
            result = await ledger.settle_hold(
                session, hold_id=hold_id, charge=charge, description=f"{model.id} via {upstream.provider}"
            )
            session.add(
                UsageRecord(
                    request_id=request_id,
                    user_id=principal.user_id,
                    model=model.id,
                    provider=upstream.provider,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    credits=to_hundredths(result.charged),
                    latency_ms=upstream.latency_ms,
                    outcome="ok",
                )
            )
        settled = True
        return ChatResult(response, request_id, result.charged, upstream.provider)
    finally:
        if not settled:
            await asyncio.shield(
                _release(rt, hold_id=hold_id, request_id=request_id, principal=principal, model_id=model.id)
            )


async def _release(rt: Runtime, *, hold_id: int, request_id: str, principal: Principal, model_id: str) -> None:
    try:
        async with rt.sessionmaker() as session, session.begin():
            await ledger.release_hold(session, hold_id=hold_id)
            session.add(
                UsageRecord(
                    request_id=request_id,
                    user_id=principal.user_id,
                    model=model_id,
                    provider=None,
                    prompt_tokens=0,
                    completion_tokens=0,
                    credits=0,
                    latency_ms=0,
                    outcome="failed",
                )
            )
    except Exception:  # the sweeper releases it at expiry
        log.exception("could not release hold %s; the sweeper will", hold_id)
