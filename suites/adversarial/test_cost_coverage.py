"""Cost coverage: whatever a client puts in a body, the hold bounds what the upstream bills and revenue covers it.

The fake upstream bills the prompt from *everything it received* (``FakeProvider(bill_everything=True)``: every
string in the forwarded body at 4 bytes a token, 1,600 tokens an image) — not from the gateway's estimate, so the
oracle does not repeat the rule under test. Hypothesis builds bodies on both protocols and every inference route:
every content block type (text, images by data and by URL, documents, files, audio), tool definitions, tool calls
and nested tool results, system prompts as strings and blocks, unicode with lone surrogates, tiny and huge
values. For every request:

- never a 5xx; a 4xx is machine-readable and moves no credit;
- answered: the hold covered the catalog price of the upstream's usage (the estimate read every part), and the
  account was charged that price — or charged down to zero with the shortfall on record.
"""

from __future__ import annotations

import asyncio
import base64
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from sqlalchemy import func, select

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.db.models import Account, Hold, UsageRecord
from creditgate.runtime import Runtime
from creditgate.testing.catalog import FAKE_UPSTREAM
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.oracle import Pricing

PRICES = {"oa-model": (Decimal("0.003"), Decimal("0.015")), "an-model": (Decimal("0.003"), Decimal("0.015"))}
PRICING = Pricing(PRICES, margin=Decimal("1.5"), credit_value_usd=Decimal("0.01"), increment=Decimal("0.1"))
EXAMPLES = 150
NESTED = "abcdef " * 6000  # 42 kB: the probe's text inside a block's content list


@pytest.fixture
def cg_catalog() -> Catalog:
    """One model per wire protocol, both on the fake: a same-protocol client's body goes up as sent."""
    providers = (
        ProviderConfig(name="fake-oa", kind="openai", base_url=FAKE_UPSTREAM, api_key="sk-fake"),
        ProviderConfig(name="fake-an", kind="anthropic", base_url=FAKE_UPSTREAM, api_key="sk-fake"),
    )
    models = tuple(
        ModelConfig(
            id=name,
            input_per_1k=PRICES[name][0],
            output_per_1k=PRICES[name][1],
            default_max_tokens=1000,
            max_output_tokens=4096,
            providers=(ModelRoute(provider=provider),),
        )
        for name, provider in (("oa-model", "fake-oa"), ("an-model", "fake-an"))
    )
    return Catalog(providers=providers, models=models)


@pytest.fixture
def cg_upstream() -> FakeProvider:
    return FakeProvider(bill_everything=True)


# -- bodies ------------------------------------------------------------------------------------------------------
LONE = st.sampled_from(["\ud800", "\udfff", "\udbff"])
texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x600, max_codepoint=0x6FF), max_size=200),  # Arabic
    st.sampled_from([("", 0), ("x", 60_000), ("语", 30_000), ("😀", 20_000)]).map(lambda t: t[0] * t[1]),  # 60–80 kB
)
blob = st.binary(min_size=0, max_size=3000).map(lambda b: base64.b64encode(b).decode())
big_blob = st.just(20_000).map(lambda n: base64.b64encode(b"%PDF-1.4 " * n).decode())  # ~240 kB, no PDF


def pdf(pages: int) -> str:
    """A valid PDF of ``pages`` pages sharing one content stream: tiny bytes, a vendor bills it by the page."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + i} 0 R' for i in range(pages))}] /Count {pages} >>",
        "<< /Length 44 >>\nstream\nBT /F1 24 Tf 72 700 Td (Hello page) Tj ET\nendstream",
    ] + ["<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>"] * pages
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF".encode()
    return base64.b64encode(out).decode()


pdfs = st.integers(1, 300).map(pdf)
schema = st.recursive(
    st.dictionaries(st.sampled_from(["type", "description", "enum"]), texts, max_size=2),
    lambda inner: st.dictionaries(st.text(min_size=1, max_size=12), inner, max_size=4),
    max_leaves=8,
)

openai_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda b: {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b}}, blob),
    st.just({"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "high"}}),
    st.builds(lambda b: {"type": "input_audio", "input_audio": {"data": b, "format": "wav"}}, blob),
    st.builds(lambda b: {"type": "file", "file": {"file_data": b, "filename": "a.pdf"}}, st.one_of(blob, big_blob)),
    st.builds(
        lambda b: {"type": "file", "file": {"file_data": "data:application/pdf;base64," + b, "filename": "a.pdf"}},
        pdfs,
    ),
    st.just({"type": "file", "file": {"file_id": "file-abc123"}}),  # the upstream expands it: unbounded
    st.builds(lambda t: {"type": "mystery_block", "payload": t}, texts),
)
openai_tool_call = st.builds(
    lambda name, args: {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}},
    st.text(min_size=1, max_size=30),
    texts,
)
openai_message = st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, texts),
    st.builds(lambda parts: {"role": "user", "content": parts}, st.lists(openai_part, min_size=1, max_size=4)),
    st.builds(lambda t: {"role": "system", "content": t}, texts),
    st.builds(
        lambda calls: {"role": "assistant", "content": None, "tool_calls": calls},
        st.lists(openai_tool_call, min_size=1, max_size=3),
    ),
    st.builds(lambda t: {"role": "tool", "tool_call_id": "call_1", "content": t}, texts),
)
openai_tool = st.builds(
    lambda name, d, p: {"type": "function", "function": {"name": name, "description": d, "parameters": p}},
    st.text(min_size=1, max_size=30),
    texts,
    schema,
)
BAD_MAX_TOKENS = st.sampled_from([0, -1, 4097, 10**12, "100", "١٠٠", 1.5, None, True])
# Mostly small: with a large output reserve the hold can cover an under-counted prompt by accident.
max_tokens = st.integers(0, 9).flatmap(
    lambda i: BAD_MAX_TOKENS if i == 0 else st.integers(1, 4096) if i == 1 else st.integers(1, 32)
)


def poisoned(body: dict[str, Any], draw: st.DrawFn) -> dict[str, Any]:
    """One time in eight, a lone surrogate somewhere a client can put text: unencodable, must be a 400."""
    if draw(st.integers(0, 7)) == 0:
        where = draw(st.sampled_from(["message", "model", "user", "system"]))
        text = draw(st.tuples(st.text(max_size=10), LONE).map("".join))
        if where == "message":
            body["messages"].append({"role": "user", "content": text})
        elif where == "model":
            body["model"] += text
        else:
            body[where] = text
    return body


@st.composite
def openai_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["oa-model", "an-model"])),
        "messages": draw(st.lists(openai_message, min_size=1, max_size=5)),
        "max_tokens": draw(max_tokens),
        "stream": draw(st.booleans()),
    }
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(openai_tool, min_size=1, max_size=4))
    if draw(st.booleans()):
        body["user"] = draw(texts)
    if draw(st.integers(0, 9)) == 0:
        body["web_search_options"] = {}
    if body["stream"]:
        body["stream_options"] = {"include_usage": True}
    return poisoned(body, draw)


source = st.one_of(
    st.builds(lambda b: {"type": "base64", "media_type": "image/png", "data": b}, blob),
    st.just({"type": "url", "url": "https://example.test/cat.png"}),
)
doc_source = st.one_of(
    st.builds(lambda b: {"type": "base64", "media_type": "application/pdf", "data": b}, st.one_of(blob, big_blob)),
    st.builds(lambda b: {"type": "base64", "media_type": "application/pdf", "data": b}, pdfs),
    st.builds(lambda t: {"type": "text", "media_type": "text/plain", "data": t}, texts),
    st.just({"type": "url", "url": "https://example.test/huge.pdf"}),  # fetched upstream: unbounded
    st.just({"type": "file", "file_id": "file_abc"}),
)
anthropic_leaf = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda s: {"type": "image", "source": s}, source),
)
anthropic_block = st.one_of(
    anthropic_leaf,
    st.builds(lambda s, t: {"type": "document", "source": s, "title": t}, doc_source, texts),
    st.builds(
        lambda name, inp: {"type": "tool_use", "id": "toolu_1", "name": name, "input": inp},
        st.text(min_size=1, max_size=30),
        schema,
    ),
    st.builds(
        lambda c: {"type": "tool_result", "tool_use_id": "toolu_1", "content": c},
        st.one_of(texts, st.lists(anthropic_leaf, max_size=3)),
    ),
    st.builds(lambda t: {"type": "text", "text": t, "cache_control": {"type": "ephemeral"}}, texts),
    st.builds(
        lambda kind, inner: {"type": kind, "source": "s", "title": "t", "content": inner},
        st.sampled_from(["search_result", "mystery_container"]),
        st.lists(anthropic_leaf, min_size=1, max_size=3),
    ),
)
anthropic_message = st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, texts),
    st.builds(
        lambda role, blocks: {"role": role, "content": blocks},
        st.sampled_from(["user", "assistant"]),
        st.lists(anthropic_block, min_size=1, max_size=4),
    ),
)
anthropic_tool = st.one_of(
    st.builds(
        lambda name, d, s: {"name": name, "description": d, "input_schema": s},
        st.text(min_size=1, max_size=30),
        texts,
        schema,
    ),
    st.just({"type": "web_search_20250305", "name": "web_search"}),  # adds input upstream: unbounded
)
anthropic_tools = st.lists(anthropic_tool, min_size=1, max_size=3)


@st.composite
def anthropic_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["an-model", "oa-model"])),
        "messages": draw(st.lists(anthropic_message, min_size=1, max_size=5)),
        "max_tokens": draw(max_tokens),
        "stream": draw(st.booleans()),
    }
    system = draw(st.one_of(st.none(), texts, st.lists(anthropic_leaf, max_size=3)))
    if system is not None:
        body["system"] = system
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(anthropic_tool, min_size=1, max_size=3))
    return poisoned(body, draw)


requests = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), openai_body()),
    st.tuples(st.just("/v1/messages"), anthropic_body()),
    st.tuples(st.just("/v1/messages/count_tokens"), anthropic_body()),
)


# -- the books -----------------------------------------------------------------------------------------------------
async def _books(rt: Runtime, user: TestUser) -> tuple[int, int]:
    """(balance, open holds) of the user's account, in hundredths."""
    async with rt.sessionmaker() as session:
        balance = await session.scalar(select(Account.balance).where(Account.id == user.account_id))
        holds = await session.scalar(
            select(func.count()).where(Hold.account_id == user.account_id, Hold.status == "open")
        )
    return int(balance or 0), int(holds or 0)


async def _charged(rt: Runtime, request_id: str) -> tuple[int, int, int]:
    """(hold amount, credits charged, unrecovered) of one request, in hundredths."""
    async with rt.sessionmaker() as session:
        held = await session.scalar(select(Hold.amount).where(Hold.request_id == request_id))
        record = (
            await session.execute(
                select(UsageRecord.credits, UsageRecord.unrecovered).where(UsageRecord.request_id == request_id)
            )
        ).one()
    return int(held or 0), record.credits, record.unrecovered


def _hundredths(credits: Decimal) -> int:
    return int(credits * 100)


async def _check(
    client: httpx.AsyncClient, rt: Runtime, upstream: FakeProvider, user: TestUser, path: str, body: dict[str, Any]
) -> None:
    before, _ = await _books(rt, user)
    calls = len(upstream.calls)
    try:
        content = httpx.Request("POST", "http://x", json=body).content
    except UnicodeEncodeError:  # httpx cannot send a lone surrogate as UTF-8: send the JSON escape, as a client may
        import json

        content = json.dumps(body).encode()
    response = await client.post(path, content=content, headers=user.headers | {"Content-Type": "application/json"})
    assert response.status_code < 500, (path, response.status_code, response.text[:500])
    code = response.json()["error"].get("code") if response.status_code != 200 else "answered"
    if currently_in_test_context():
        event(f"{path} {response.status_code} {code}")
    after, open_holds = await _books(rt, user)
    assert open_holds == 0, f"{path}: a hold was left open ({response.status_code})"
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["type"], response.text
        assert after == before, f"{path}: a refused request ({response.status_code}) moved {after - before}"
        return
    if path.endswith("count_tokens"):
        assert after == before, "counting tokens is free"
        return
    assert len(upstream.calls) == calls + 1
    prompt, completion = upstream.usage_for(upstream.calls[-1].body)
    price = _hundredths(PRICING.credits(body["model"], prompt_tokens=prompt, completion_tokens=completion))
    held, charged, unrecovered = await _charged(rt, response.headers["X-Request-Id"])
    # The operator's invariant: what the upstream billed was covered up front, then paid.
    assert held >= price, f"{path}: held {held} for a request the upstream billed {price} ({prompt} prompt tokens)"
    assert charged + unrecovered == price, (charged, unrecovered, price)
    assert before - after == charged
    if unrecovered:
        assert after == 0, "a shortfall is only recorded once the balance is exhausted"


@pytest.fixture
async def rich(cg_user_factory: UserFactory) -> TestUser:
    return await cg_user_factory(credits=1_000_000)


@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None)
@given(request=requests)
async def test_the_hold_covers_and_the_charge_pays_what_the_upstream_billed(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    rich: TestUser,
    request: tuple[str, dict[str, Any]],
) -> None:
    path, body = request
    await _check(async_client, cg_runtime, cg_upstream, rich, path, body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/v1/messages",
            {
                "model": "an-model",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "summarise"},
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": base64.b64encode(b"%PDF-1.4 " * 130_000).decode(),
                                },
                            },
                        ],
                    }
                ],
            },
            id="F2-a-1.2MB-document",
        ),
        pytest.param(
            "/v1/chat/completions",
            {
                "model": "oa-model",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [
                    {"type": "function", "function": {"name": "f", "description": "d" * 300_000, "parameters": {}}}
                ],
            },
            id="F2-tool-definitions",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "an-model",
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r" * 300_000}],
                    }
                ],
            },
            id="F2-tool-results",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "an-model",
                "max_tokens": 16,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": NESTED}]}
                        ],
                    }
                ],
            },
            id="probe-text-nested-in-a-tool-result",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "an-model",
                "max_tokens": 16,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "search_result",
                                "source": "s",
                                "title": "t",
                                "content": [{"type": "text", "text": NESTED}],
                            }
                        ],
                    }
                ],
            },
            id="probe-text-nested-in-a-search-result",
        ),
        pytest.param(
            "/v1/chat/completions",
            {
                "model": "oa-model",
                "max_tokens": 16,
                "messages": [
                    {"role": "user", "content": [{"type": "zzz", "content": [{"type": "text", "text": NESTED}]}]}
                ],
            },
            id="probe-text-nested-in-an-unknown-part",
        ),
        pytest.param(
            "/v1/messages",
            {
                "model": "an-model",
                "max_tokens": 16,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "base64", "media_type": "application/pdf", "data": pdf(100)},
                            },
                            {"type": "text", "text": "summarise"},
                        ],
                    }
                ],
            },
            id="probe-a-100-page-pdf-of-12kB",
        ),
    ],
)
async def test_what_the_probe_sent_is_held_and_paid_for(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    cg_user_factory: UserFactory,
    path: str,
    body: dict[str, Any],
) -> None:
    """The probe's F2 requests, by a user with little credit: held in full (402 if unaffordable), never free."""
    for credits in (20, 1_000_000):
        user = await cg_user_factory(credits=credits)
        await _check(async_client, cg_runtime, cg_upstream, user, path, body)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_usage_beyond_the_balance_is_charged_to_zero_and_recorded(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    cg_user_factory: UserFactory,
    path: str,
    stream: bool,
) -> None:
    """An upstream billing far beyond the hold: the account pays what it has (never below zero) and the rest is
    recorded as unrecovered — on every protocol, streamed or not."""
    user = await cg_user_factory(credits=3)
    cg_upstream.push(Reply(prompt_tokens=2_000_000, completion_tokens=5))
    model = "oa-model" if path.endswith("completions") else "an-model"
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 5,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream and model == "oa-model":
        body["stream_options"] = {"include_usage": True}
    response = await async_client.post(path, json=body, headers=user.headers)
    assert response.status_code == 200
    _, charged, unrecovered = await _charged(cg_runtime, response.headers["X-Request-Id"])
    price = _hundredths(PRICING.credits(model, prompt_tokens=2_000_000, completion_tokens=5))
    assert (charged, unrecovered) == (300, price - 300)
    assert await _books(cg_runtime, user) == (0, 0)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_usage_beyond_the_balance_never_takes_it_below_zero(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    cg_user_factory: UserFactory,
    database_url: str,
) -> None:
    """Races with its own requests: eight at once, each billed far beyond its hold, share one balance (in one
    group-committed batch on Postgres). Together they take exactly what there was, never more, and every credit
    they could not pay is on record."""
    user = await cg_user_factory(credits=3)
    cg_upstream.push(*[Reply(prompt_tokens=200_000, completion_tokens=5)] * 8)
    body = {"model": "oa-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    answers = await asyncio.gather(
        *[async_client.post("/v1/chat/completions", json=body, headers=user.headers) for _ in range(8)]
    )
    answered = [a for a in answers if a.status_code == 200]
    assert answered, [a.status_code for a in answers]
    assert {a.status_code for a in answers} <= {200, 402}
    price = _hundredths(PRICING.credits("oa-model", prompt_tokens=200_000, completion_tokens=5))
    charged = unrecovered = 0
    for answer in answered:
        _, paid, lost = await _charged(cg_runtime, answer.headers["X-Request-Id"])
        assert paid + lost == price
        charged, unrecovered = charged + paid, unrecovered + lost
    assert charged == 300
    assert unrecovered == price * len(answered) - 300
    assert await _books(cg_runtime, user) == (0, 0)
