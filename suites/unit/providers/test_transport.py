"""The providers' connection pool over real sockets: aiohttp's (the default) and httpx's own behave the same for
every way an upstream answers or fails — the charge, the failover and the stream's end do not depend on it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from httpx_aiohttp import AiohttpTransport

from creditgate.catalog import pricing
from creditgate.catalog.service import Catalog, ModelRoute, ProviderConfig
from creditgate.main import create_app
from creditgate.providers.transport import providers_transport
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.modes import Fake
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from creditgate_harness.services.base import free_port
from suites.unit.llm.test_chat import balance, body, expected_charge

CHAT = "/v1/chat/completions"


@pytest.fixture(params=["aiohttp", "httpx"])
def cg_settings(cg_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return cg_settings.model_copy(update={"upstream_client": request.param, "upstream_timeout_seconds": 1.0})


@pytest.fixture
def garbled_port() -> Iterator[int]:
    """A server that answers every request with bytes that are not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()


@pytest.fixture
def cg_catalog(cg_upstream_server: Fake[FakeProvider], garbled_port: int) -> Catalog:
    """Every model tries a provider nobody listens on, then one that answers garbage, then the fake."""
    base = catalog_for_tests(cg_upstream_server.url)
    down = ProviderConfig(name="down", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k")
    garbled = ProviderConfig(name="garbled", base_url=f"http://127.0.0.1:{garbled_port}/v1", api_key="k")
    first = (ModelRoute(provider="down"), ModelRoute(provider="garbled"))
    models = tuple(m.model_copy(update={"providers": (*first, *m.providers)}) for m in base.models)
    return Catalog(providers=(down, garbled, *base.providers), models=models)


@pytest.fixture
def cg_app(cg_settings: Settings, cg_catalog: Catalog) -> FastAPI:
    """The gateway with its own connection pool (no transport passed in)."""
    return create_app(cg_settings, catalog=cg_catalog)


def test_the_default_pool_is_aiohttps_and_httpxs_is_one_setting_away() -> None:
    assert isinstance(providers_transport(Settings(_env_file=None)), AiohttpTransport)  # type: ignore[call-arg]
    httpx_pool = providers_transport(Settings(_env_file=None, upstream_client="httpx"))  # type: ignore[call-arg]
    assert type(httpx_pool) is httpx.AsyncHTTPTransport


async def test_a_refused_connection_and_a_garbled_answer_fail_over_and_the_answer_is_charged(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="over the wire", prompt_tokens=100, completion_tokens=50))
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "over the wire"
    assert response.headers["X-Creditgate-Provider"] == "fake"
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(100, 50)


async def test_a_stream_arrives_whole_and_is_charged_its_usage(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Reply(content="one two three", prompt_tokens=10, completion_tokens=30))
    response = await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in map(json.loads, data[:-1]) if c["choices"])
    assert text == "one two three"
    assert await balance(async_client, cg_funded_user) == Decimal(1000) - expected_charge(10, 30)


async def test_a_stream_cut_mid_way_ends_without_done_and_is_charged_what_was_delivered(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.cut_stream(after_chunks=2))
    response = await async_client.post(CHAT, json={**body(), "stream": True}, headers=cg_funded_user.headers)
    assert response.status_code == 200
    assert "[DONE]" not in response.text
    usage = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"][0]
    assert usage["outcome"] == "cut"
    delivered = pricing.estimate_prompt_tokens(["Hello from"])  # the fake's first two chunks
    assert Decimal(usage["credits"]) == expected_charge(pricing.estimate_prompt_tokens(["hello"]), delivered)


async def test_an_upstream_that_hangs_times_out_with_nothing_charged(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.push(Fault.hang(seconds=5))
    response = await async_client.post(CHAT, json=body(), headers=cg_funded_user.headers)
    assert response.status_code == 502, response.text
    assert "timeout" in response.text
    assert await balance(async_client, cg_funded_user) == Decimal(1000)
