"""One tenant's bad traffic never changes another tenant's outcomes (issue 26, class 3, F5).

The gateway keeps one circuit breaker per provider, shared by every tenant. Each kind of bad traffic below is
sent more times than the breaker's threshold by an attacker; then a victim on another account sends a normal
request. Its status, answer, provider and charge must be those of a baseline run before the attack: the
attacker's traffic may cost the attacker, never the victim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.providers import ADAPTERS
from creditgate.providers.base import ChatCall
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply

THRESHOLD = 3  # the breaker opens after this many consecutive failures
CHAT = "/v1/chat/completions"
COUNT = "/v1/messages/count_tokens"
KEYS = "/user/provider-keys"
HI = [{"role": "user", "content": "hi"}]
POISON = "poison-this-request"  # the patched adapter turns this ``user`` into a lone surrogate
VICTIM_REPLY = Reply(content="the victim's answer", prompt_tokens=12, completion_tokens=5)


@pytest.fixture
def cg_settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        redis_key_prefix=redis_prefix,
        sweep_interval_seconds=3600,
        upstream_timeout_seconds=5,
        breaker_threshold=THRESHOLD,
        breaker_cooldown_seconds=30,
        byok_encryption_key=Fernet.generate_key().decode(),
    )


@pytest.fixture
def cg_catalog() -> Catalog:
    """The test catalog (``test-model``: one OpenAI-style provider, ``fake``) plus ``claude-native`` on an
    Anthropic-style provider, which can count tokens. Both providers are the same fake upstream."""
    base = catalog_for_tests()
    native = ProviderConfig(name="anthropic-native", kind="anthropic", base_url="http://anthropic.test/v1", api_key="a")
    claude = ModelConfig(
        id="claude-native",
        input_per_1k=Decimal("0.003"),
        output_per_1k=Decimal("0.015"),
        providers=(ModelRoute(provider="anthropic-native", model="claude-x"),),
    )
    return Catalog(providers=(*base.providers, native), models=(*base.models, claude))


@pytest.fixture(autouse=True)
def poisoned_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body the gateway accepts but cannot encode for the upstream, whatever the routes check: the OpenAI
    adapter puts a lone surrogate in ``user`` when the client's ``user`` is ``POISON``."""
    adapter = type(ADAPTERS["openai"])
    original = adapter.chat_request

    def chat_request(self: Any, call: ChatCall, *, model: str, stream: bool) -> tuple[str, dict[str, Any]]:
        path, payload = original(self, call, model=model, stream=stream)
        if call.native.get("user") == POISON:
            payload = {**payload, "user": "\ud800"}
        return path, payload

    monkeypatch.setattr(adapter, "chat_request", chat_request)


@dataclass(frozen=True)
class Tenants:
    victim: TestUser
    attacker: TestUser  # funded, no keys of its own
    byok: TestUser  # no credits, its own (refused) key for ``fake``
    broke: TestUser  # no credits, no keys


@pytest.fixture
async def tenants(async_client: httpx.AsyncClient, cg_user_factory: UserFactory) -> Tenants:
    victim, attacker = await cg_user_factory(credits=1000), await cg_user_factory(credits=1000)
    byok, broke = await cg_user_factory(credits=0), await cg_user_factory(credits=0)
    stored = await async_client.post(
        KEYS, json={"provider": "fake", "api_key": "sk-attacker-own-9876"}, headers=byok.headers
    )
    assert stored.status_code == 200
    return Tenants(victim, attacker, byok, broke)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "max_tokens": 10, "messages": HI, **extra}


Send = Callable[[httpx.AsyncClient, Tenants], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Attack:
    upstream: Reply | Fault  # what the upstream answers while the attacker sends
    send: Send
    expected: int  # the attacker's own answer


def _chat_as(who: str, **extra: Any) -> Send:
    async def send(client: httpx.AsyncClient, tenants: Tenants) -> httpx.Response:
        user: TestUser = getattr(tenants, who)
        return await client.post(CHAT, json=chat(**extra), headers=user.headers)

    return send


def _raw_as(who: str, raw: bytes) -> Send:
    """A body sent as bytes: JSON escapes the test client could not encode itself."""

    async def send(client: httpx.AsyncClient, tenants: Tenants) -> httpx.Response:
        user: TestUser = getattr(tenants, who)
        headers = user.headers | {"Content-Type": "application/json"}
        return await client.post(CHAT, content=raw, headers=headers)

    return send


async def _count_openai_only(client: httpx.AsyncClient, tenants: Tenants) -> httpx.Response:
    return await client.post(COUNT, json={"model": "test-model", "messages": HI}, headers=tenants.broke.headers)


_SURROGATE = json.dumps(chat(user="\ud800")).encode()  # ensure_ascii: sent as the escape \ud800
_NAN = json.dumps(chat()).removesuffix("}").encode() + b', "seed_scale": NaN}'

ATTACKS: dict[str, Attack] = {
    # Bodies that fail to encode: nothing reaches the upstream, so nothing may count against it.
    "unencodable-user": Attack(VICTIM_REPLY, _chat_as("attacker", user=POISON), 400),
    "unencodable-byok": Attack(VICTIM_REPLY, _chat_as("byok", user=POISON), 400),
    "surrogate-on-the-wire": Attack(VICTIM_REPLY, _raw_as("attacker", _SURROGATE), 400),
    "nan-on-the-wire": Attack(VICTIM_REPLY, _raw_as("attacker", _NAN), 400),
    # The user's own key, refused by the vendor: the user's problem, never the operator's circuit.
    "byok-401": Attack(Fault.status_code(401), _chat_as("byok"), 400),
    "byok-403": Attack(Fault.status_code(403), _chat_as("byok"), 400),
    "byok-429": Attack(Fault.rate_limited(), _chat_as("byok"), 429),
    "byok-500": Attack(Fault.status_code(500), _chat_as("byok"), 502),
    # Free token counts on a model no provider of which can count: the estimate, and no failure of anyone's.
    "count-tokens-openai-only": Attack(Fault.status_code(500), _count_openai_only, 200),
    # 4xx the upstream blames on the request itself.
    **{f"upstream-{s}": Attack(Fault.status_code(s), _chat_as("attacker"), 400) for s in (400, 404, 413, 422)},
}


async def attack(client: httpx.AsyncClient, upstream: FakeProvider, tenants: Tenants, kind: str) -> int:
    """Send one request of ``kind``; its status (500 for an exception that escaped the app, which the in-process
    transport raises where a server would answer 500)."""
    step = ATTACKS[kind]
    upstream.default = step.upstream
    try:
        return (await step.send(client, tenants)).status_code
    except Exception:
        return 500
    finally:
        upstream.default = VICTIM_REPLY


async def balance(client: httpx.AsyncClient, user: TestUser) -> Decimal:
    return Decimal((await client.get("/user/balance", headers=user.headers)).json()["balance"])


async def victim_outcome(client: httpx.AsyncClient, upstream: FakeProvider, victim: TestUser) -> tuple[Any, ...]:
    """(status, answer, provider, credits charged, balance taken) of the victim's normal chat request."""
    upstream.default = VICTIM_REPLY
    before = await balance(client, victim)
    response = await client.post(CHAT, json=chat(), headers=victim.headers)
    body = response.json()
    answer = body["choices"][0]["message"]["content"] if response.status_code == 200 else body["error"]
    taken = before - await balance(client, victim)
    headers = response.headers
    return (
        response.status_code,
        answer,
        headers.get("X-Creditgate-Provider"),
        headers.get("X-Creditgate-Credits-Charged"),
        taken,
    )


@pytest.mark.parametrize("kind", list(ATTACKS))
async def test_bad_traffic_of_one_tenant_leaves_another_tenants_request_alone(
    async_client: httpx.AsyncClient, cg_upstream: FakeProvider, tenants: Tenants, kind: str
) -> None:
    baseline = await victim_outcome(async_client, cg_upstream, tenants.victim)
    assert baseline[0] == 200, baseline
    answers = [await attack(async_client, cg_upstream, tenants, kind) for _ in range(THRESHOLD + 2)]
    assert await victim_outcome(async_client, cg_upstream, tenants.victim) == baseline
    assert answers == [ATTACKS[kind].expected] * (THRESHOLD + 2)  # the attacker gets a clean answer of its own


@pytest.fixture
async def baseline(async_client: httpx.AsyncClient, cg_upstream: FakeProvider, tenants: Tenants) -> tuple[Any, ...]:
    return await victim_outcome(async_client, cg_upstream, tenants.victim)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mix=st.lists(st.sampled_from(sorted(ATTACKS)), min_size=THRESHOLD + 1, max_size=THRESHOLD + 4))
async def test_any_mix_of_bad_traffic_leaves_another_tenants_request_alone(
    async_client: httpx.AsyncClient,
    cg_upstream: FakeProvider,
    tenants: Tenants,
    baseline: tuple[Any, ...],
    mix: list[str],
) -> None:
    # One gateway for every example: the breakers carry what earlier examples did, a harder test than a fresh one.
    for kind in mix:
        await attack(async_client, cg_upstream, tenants, kind)
    assert await victim_outcome(async_client, cg_upstream, tenants.victim) == baseline


async def test_a_count_tokens_flood_spends_little_of_the_operators_vendor_limit(
    async_client: httpx.AsyncClient, cg_upstream: FakeProvider, tenants: Tenants
) -> None:
    """count_tokens is free: a caller's flood is answered mostly with the estimate, not by the operator's key."""
    body = {"model": "claude-native", "messages": [{"role": "user", "content": "count these words please"}]}
    baseline = await async_client.post(COUNT, json=body, headers=tenants.victim.headers)
    assert baseline.headers["X-Creditgate-Token-Count"] == "anthropic-native"
    cg_upstream.calls.clear()

    flood, started = 60, time.monotonic()
    answers = [await async_client.post(COUNT, json=body, headers=tenants.broke.headers) for _ in range(flood)]
    assert {a.status_code for a in answers} == {200}
    vendor_calls = len(cg_upstream.calls)
    assert vendor_calls < flood // 2, f"{vendor_calls} of {flood} counts in {time.monotonic() - started:.1f}s"

    victim = await async_client.post(COUNT, json=body, headers=tenants.victim.headers)
    assert (victim.status_code, victim.json(), victim.headers["X-Creditgate-Token-Count"]) == (
        200,
        baseline.json(),
        "anthropic-native",
    )
