"""providers/pool.py: circuit breakers open, skip, probe half-open and close — on a fake clock, no sleeps.

A circuit is shared by every tenant, so it counts only what the provider did: never a request that could not
be encoded or built, a 4xx the provider blamed on the request, a caller that went away, BYOK traffic or a
token count.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import httpx
import pytest
from cryptography.fernet import Fernet

from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.errors import InvalidRequest, ProviderUnavailable
from creditgate.providers.base import ChatCall, Turn
from creditgate.providers.pool import CallerLimiter, ProviderPool
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import purgatory.domain.model as breaker_model

    fake = FakeClock()
    monkeypatch.setattr(breaker_model.time, "time", fake.time)
    return fake


@pytest.fixture
def cg_settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        breaker_threshold=3,
        breaker_cooldown_seconds=30,
        sweep_interval_seconds=3600,
        byok_encryption_key=Fernet.generate_key().decode(),
    )


@pytest.fixture
def cg_catalog() -> Catalog:
    base = catalog_for_tests()
    providers = (
        ProviderConfig(name="primary", base_url="http://primary.test/v1", api_key="k1"),
        ProviderConfig(name="backup", base_url="http://backup.test/v1", api_key="k2"),
    )
    routes = (ModelRoute(provider="primary"), ModelRoute(provider="backup"))
    return Catalog(providers=providers, models=tuple(m.model_copy(update={"providers": routes}) for m in base.models))


def hosts(fake: FakeProvider) -> list[str]:
    return [c.headers["host"].split(".")[0] for c in fake.calls]


async def circuit(client: httpx.AsyncClient, name: str) -> str:
    providers = (await client.get("/catalog/providers")).json()["data"]
    return str(next(p for p in providers if p["name"] == name)["circuit"])


async def test_breaker_opens_skips_probes_and_closes(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    # Three failures of the primary (each served by the backup) open its circuit.
    cg_upstream.push(*[step for _ in range(3) for step in (Fault.status_code(500), Reply())])
    for _ in range(3):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert hosts(cg_upstream) == ["primary", "backup"] * 3
    assert await circuit(async_client, "primary") == "opened"

    # While open, the primary is not called at all.
    cg_upstream.calls.clear()
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert hosts(cg_upstream) == ["backup"]

    # After the cooldown one probe goes through; it fails and the circuit opens again.
    clock.now += 31
    cg_upstream.calls.clear()
    cg_upstream.push(Fault.status_code(503), Reply())
    await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert hosts(cg_upstream) == ["primary", "backup"]
    assert await circuit(async_client, "primary") == "opened"

    # Next cooldown: the probe succeeds and the circuit closes.
    clock.now += 31
    cg_upstream.calls.clear()
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.headers["X-Creditgate-Provider"] == "primary"
    assert await circuit(async_client, "primary") == "closed"


async def test_client_errors_do_not_count_against_the_breaker(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    cg_upstream.push(*[Fault.status_code(400)] * 5)
    for _ in range(5):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 400
    assert await circuit(async_client, "primary") == "closed"


async def test_all_circuits_open_is_502_listing_them(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    cg_upstream.default = Fault.status_code(500)
    for _ in range(3):
        await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 502
    assert response.json()["error"]["attempts"] == [
        {"provider": "primary", "outcome": "circuit open"},
        {"provider": "backup", "outcome": "circuit open"},
    ]
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


@pytest.mark.parametrize(
    "fault",
    [Fault.status_code(401), Fault.status_code(403), Fault.rate_limited(), Fault.malformed()],
    ids=["401", "403", "429", "malformed"],
)
async def test_the_operators_key_refused_or_a_malformed_answer_counts(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock, fault: Fault
) -> None:
    cg_upstream.push(*[step for _ in range(3) for step in (fault, Reply())])
    for _ in range(3):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 200
    assert await circuit(async_client, "primary") == "opened"


async def test_a_client_error_neither_resets_the_count_nor_closes_a_half_open_circuit(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    """A 400 says the request was bad, not that the provider is well: it is no success either."""
    cg_upstream.push(Fault.status_code(500), Reply(), Fault.status_code(500), Reply(), Fault.status_code(400))
    for status in (200, 200, 400):
        assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == status
    cg_upstream.push(Fault.status_code(500), Reply())
    await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert await circuit(async_client, "primary") == "opened"  # the third failure in a row, the 400 aside

    clock.now += 31
    cg_upstream.push(Fault.status_code(422))
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 400
    assert await circuit(async_client, "primary") == "half-opened"  # the probe proved nothing
    cg_upstream.calls.clear()
    cg_upstream.push(Fault.status_code(503), Reply())
    await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert hosts(cg_upstream) == ["primary", "backup"]
    assert await circuit(async_client, "primary") == "opened"


async def test_a_body_json_cannot_encode_is_400_and_never_reaches_a_circuit(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    """NaN parses (Python's json takes it) but no JSON encoder sends it: the request's fault, not the provider's."""
    raw = json.dumps(BODY).removesuffix("}").encode() + b', "scale": NaN}'
    headers = cg_funded_user.headers | {"Content-Type": "application/json"}
    for _ in range(5):
        response = await async_client.post(CHAT, content=raw, headers=headers)
        assert response.status_code == 400
        assert "NaN" in response.json()["error"]["message"]
    assert cg_upstream.calls == []
    assert await circuit(async_client, "primary") == "closed"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


async def test_a_protocol_that_cannot_serve_the_request_is_skipped_without_counting(
    async_client: httpx.AsyncClient, cg_user_factory: UserFactory, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    """Token counts on a model whose providers are all OpenAI-style: the estimate, and no circuit moves."""
    broke = await cg_user_factory(credits=0)
    count = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(5):
        response = await async_client.post("/v1/messages/count_tokens", json=count, headers=broke.headers)
        assert (response.status_code, response.headers["X-Creditgate-Token-Count"]) == (200, "estimate")
    assert cg_upstream.calls == []
    assert [await circuit(async_client, name) for name in ("primary", "backup")] == ["closed", "closed"]


async def test_byok_traffic_never_moves_the_operators_circuit(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_user_factory: UserFactory,
    cg_upstream: FakeProvider,
    clock: FakeClock,
) -> None:
    own = await cg_user_factory(credits=0)
    keys = {"provider": "primary", "api_key": "sk-own-key-4321"}
    assert (await async_client.post("/user/provider-keys", json=keys, headers=own.headers)).status_code == 200
    cg_upstream.default = Fault.status_code(500)
    for _ in range(5):
        failed = await async_client.post(CHAT, json=BODY, headers=own.headers)
        assert failed.status_code == 502
        assert failed.json()["error"]["attempts"] == [{"provider": "primary", "outcome": "HTTP 500"}]
    for fault in (Fault.status_code(401), Fault.status_code(403), Fault.rate_limited()):
        cg_upstream.default = fault
        assert (await async_client.post(CHAT, json=BODY, headers=own.headers)).status_code in {400, 429}
    assert {c.headers["authorization"] for c in cg_upstream.calls} == {"Bearer sk-own-key-4321"}
    assert await circuit(async_client, "primary") == "closed"

    cg_upstream.default = Reply()  # the operator's traffic goes to the primary as before
    cg_upstream.calls.clear()
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert (response.status_code, response.headers["X-Creditgate-Provider"]) == (200, "primary")


# -- the pool on its own: no routes in front of it ------------------------------------------------------------
NATIVE = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def pool_for(catalog: Catalog, transport: httpx.AsyncBaseTransport, *, count_burst: int = 10) -> ProviderPool:
    http = httpx.AsyncClient(transport=transport)
    return ProviderPool(http, catalog, threshold=3, cooldown=30, count_burst=count_burst)


def chat_call(**native: object) -> ChatCall:
    return ChatCall(protocol="openai", native=NATIVE | native, system="", turns=(Turn("user", "hi"),), max_tokens=10)


@pytest.mark.parametrize("poison", ["\ud800", float("nan"), float("inf")], ids=["surrogate", "nan", "inf"])
async def test_the_pool_refuses_what_it_cannot_encode_before_any_circuit(
    cg_catalog: Catalog, cg_upstream: FakeProvider, clock: FakeClock, poison: object
) -> None:
    pool = pool_for(cg_catalog, httpx.ASGITransport(app=cg_upstream.app))
    model = cg_catalog.model("test-model")
    for _ in range(5):
        with pytest.raises(InvalidRequest):
            await pool.complete(model=model, call=chat_call(user=poison), timeout=5, user_keys={})
        with pytest.raises(InvalidRequest):
            await pool.stream(model=model, call=chat_call(user=poison), timeout=5, user_keys={})
    assert cg_upstream.calls == []
    assert await pool.state("primary") == "closed"
    served = await pool.complete(model=model, call=chat_call(), timeout=5, user_keys={})
    assert served.provider == "primary"


async def test_a_caller_going_away_mid_call_does_not_count(
    cg_catalog: Catalog, cg_upstream: FakeProvider, clock: FakeClock
) -> None:
    pool = pool_for(cg_catalog, httpx.ASGITransport(app=cg_upstream.app))
    model = cg_catalog.model("test-model")
    cg_upstream.gate = asyncio.Event()  # every call waits: the caller gives up first
    for n in range(1, 5):
        task = asyncio.create_task(pool.complete(model=model, call=chat_call(), timeout=5, user_keys={}))
        while len(cg_upstream.calls) < n:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await pool.state("primary") == "closed"


def counting_catalog() -> Catalog:
    counter = ProviderConfig(name="counter", kind="anthropic", base_url="http://counter.test/v1", api_key="ak")
    claude = ModelConfig(
        id="claude-x",
        input_per_1k=Decimal("0.003"),
        output_per_1k=Decimal("0.015"),
        providers=(ModelRoute(provider="counter"),),
    )
    return Catalog(providers=(counter,), models=(claude,))


async def test_token_counts_respect_an_open_circuit_but_never_feed_it(clock: FakeClock) -> None:
    paths: list[str] = []

    def failing(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "down"}})

    catalog = counting_catalog()
    pool = pool_for(catalog, httpx.MockTransport(failing), count_burst=100)
    model = catalog.model("claude-x")
    call = ChatCall(protocol="anthropic", native={}, system="", turns=(Turn("user", "hi"),), max_tokens=10)
    for _ in range(5):
        with pytest.raises(ProviderUnavailable):
            await pool.count_tokens(model=model, call=call, timeout=5, caller="user:1")
    assert await pool.state("counter") == "closed"  # five failed counts: the estimate answered, nothing counted

    for _ in range(3):  # paid traffic fails: the circuit opens
        with pytest.raises(ProviderUnavailable):
            await pool.complete(model=model, call=call, timeout=5, user_keys={})
    assert await pool.state("counter") == "opened"
    paths.clear()
    with pytest.raises(ProviderUnavailable) as skipped:
        await pool.count_tokens(model=model, call=call, timeout=5, caller="user:1")
    assert skipped.value.extra["attempts"] == [{"provider": "counter", "outcome": "circuit open"}]
    assert paths == []


def test_the_count_limiter_gives_each_caller_a_burst_then_a_trickle() -> None:
    now = [100.0]
    limiter = CallerLimiter(burst=3, per_minute=6, max_callers=2, clock=lambda: now[0])  # one more every 10 s
    assert [limiter.take("user:1") for _ in range(4)] == [True, True, True, False]
    assert limiter.take("user:2")  # another caller has a burst of its own
    now[0] += 10
    assert [limiter.take("user:1") for _ in range(2)] == [True, False]
    now[0] += 60  # everyone idle and full again: past max_callers, the full buckets are dropped
    assert limiter.take("user:3")
    assert len(limiter._buckets) <= 2
