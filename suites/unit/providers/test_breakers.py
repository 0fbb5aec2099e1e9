"""providers/pool.py: circuit breakers open, skip, probe half-open and close — on a fake clock, no sleeps."""

from __future__ import annotations

import httpx
import pytest

from creditgate.catalog.service import Catalog, ModelRoute, ProviderConfig
from creditgate.settings import Settings
from creditgate_harness.catalog import catalog_for_tests
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from creditgate_harness.gateway import TestUser

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
