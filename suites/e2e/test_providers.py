"""Providers end to end: failover between fake providers on real ports, a client hanging up mid-stream."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from creditgate.catalog.service import Catalog, ModelRoute, ProviderConfig
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import GatewayFactory, UserFactory, start_gateway
from creditgate_harness.fakes.providers import FakeProvider, Fault, Reply
from creditgate_harness.servers import ThreadedServer

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["postgres"], indirect=True)]
BODY = {"model": "test-model", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}


async def test_failover_between_real_provider_servers(
    database_url: str, cg_user_factory: UserFactory, tmp_path: Path
) -> None:
    primary, backup = FakeProvider(default=Fault.status_code(503)), FakeProvider()
    servers = [ThreadedServer(primary.app).start(), ThreadedServer(backup.app).start()]
    base = catalog_for_tests()
    providers = (
        ProviderConfig(name="primary", base_url=f"{servers[0].url}/v1", api_key="k1"),
        ProviderConfig(name="backup", base_url=f"{servers[1].url}/v1", api_key="k2"),
    )
    routes = (ModelRoute(provider="primary"), ModelRoute(provider="backup"))
    catalog = Catalog(
        providers=providers, models=tuple(m.model_copy(update={"providers": routes}) for m in base.models)
    )
    (tmp_path / "catalog.json").write_text(catalog.model_dump_json())
    gateway = start_gateway(
        env={
            "CREDITGATE_DATABASE_URL": database_url,
            "CREDITGATE_CATALOG": str(tmp_path / "catalog.json"),
            "CREDITGATE_BREAKER_THRESHOLD": "2",
        },
        log_path=tmp_path / "gateway.log",
    )
    user = await cg_user_factory(credits=100)
    try:
        async with httpx.AsyncClient(base_url=gateway.url, headers=user.headers, timeout=30) as client:
            for _ in range(3):
                response = await client.post("/v1/chat/completions", json=BODY)
                assert response.headers["X-Creditgate-Provider"] == "backup"
            assert len(primary.calls) == 2  # the breaker opened after two failures
            providers_state = {p["name"]: p["circuit"] for p in (await client.get("/catalog/providers")).json()["data"]}
            assert providers_state == {"primary": "opened", "backup": "closed"}
            backup.default = Fault.status_code(500)
            failed = await client.post("/v1/chat/completions", json=BODY)
            assert failed.status_code == 502
            balance = (await client.get("/user/balance")).json()
            assert balance["held"] == "0.00"
    finally:
        gateway.stop()
        for server in servers:
            server.stop()


async def test_client_disconnect_mid_stream_settles_what_was_delivered(
    cg_live_server_factory: GatewayFactory, cg_user_factory: UserFactory, cg_upstream: FakeProvider
) -> None:
    server = cg_live_server_factory()
    user = await cg_user_factory(credits=100)
    cg_upstream.default = Reply(content=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    async with httpx.AsyncClient(base_url=server.url, headers=user.headers, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            lines = 0
            async for _ in response.aiter_lines():
                lines += 1
                if lines >= 6:
                    break  # hang up after a few chunks
        for _ in range(100):
            balance = (await client.get("/user/balance")).json()
            if balance["held"] == "0.00":
                break
            await asyncio.sleep(0.1)
        assert balance["held"] == "0.00"
        spent = Decimal(100) - Decimal(balance["balance"])
        assert Decimal(0) < spent < Decimal("1.0")  # some text was delivered; far less than the 2,000-token hold
        usage = (await client.get("/user/usage")).json()["data"][0]
        assert usage["outcome"] == "client_disconnected"
        assert usage["completion_tokens"] < 200
