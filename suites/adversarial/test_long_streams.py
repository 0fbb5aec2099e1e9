"""Long streams: a stream that outlives its hold's TTL keeps its hold, so the credits cannot be spent twice.

The probe (issue 26, F3): the sweeper released a live stream's hold at its TTL, the client spent the same credits
on another request, and the stream was then charged what was left (68.40 credits of service for 40.00 paid). The
invariant here is the operator's: every answered request is paid the price of what the upstream served.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from creditgate.db.models import Hold
from creditgate.ledger.sweeper import sweep_once
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.gateway import UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.oracle import Pricing

TTL = 3
PRICING = Pricing({"test-model": (Decimal("0.001"), Decimal("0.002"))})


@pytest.fixture
def cg_settings(cg_settings: Settings) -> Settings:
    """Holds expire after 3 s (not validated: the setting's floor is for production)."""
    return cg_settings.model_copy(update={"hold_ttl_seconds": TTL, "upstream_timeout_seconds": 30})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_stream_longer_than_its_hold_ttl_is_paid_in_full(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    cg_user_factory: UserFactory,
    path: str,
) -> None:
    user = await cg_user_factory(credits=4)
    words = " ".join(["tok"] * 14)
    cg_upstream.push(
        Reply(content=words, chunk_delay=0.5, prompt_tokens=10, completion_tokens=9000),  # ~7 s: over 2 TTLs
        Reply(prompt_tokens=10, completion_tokens=9000),
    )
    body = {"model": "test-model", "max_tokens": 10_000, "messages": [{"role": "user", "content": "go"}]}
    if path.endswith("completions"):
        body["stream_options"] = {"include_usage": True}

    async def sweeper() -> None:  # the gateway's sweeper, much faster than in production
        while True:
            await sweep_once(cg_runtime.sessionmaker)
            await asyncio.sleep(0.2)

    sweeping = asyncio.create_task(sweeper())
    try:
        streamed = asyncio.create_task(async_client.post(path, json=body | {"stream": True}, headers=user.headers))
        await asyncio.sleep(TTL + 1.0)  # past the first hold's TTL: the same credits, asked for again
        second = await async_client.post(path, json=body, headers=user.headers)
        first = await streamed
    finally:
        sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
    assert first.status_code == 200
    assert first.text.rstrip().endswith(("[DONE]", '"message_stop"}'))

    price = PRICING.credits("test-model", prompt_tokens=10, completion_tokens=9000)
    answered = 1 + (second.status_code == 200)
    async with cg_runtime.sessionmaker() as session:
        holds = (await session.execute(select(Hold.status, Hold.charged).order_by(Hold.id))).all()
    charged = sum(Decimal(h.charged) / 100 for h in holds)
    # Revenue covers what the upstream served for every answered request; nothing was expired under the stream.
    assert charged == price * answered, (first.status_code, second.status_code, holds)
    assert holds[0].status == "settled", holds
    assert second.status_code == 402  # its hold could not be placed: the stream still holds the credits
