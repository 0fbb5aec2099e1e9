"""app/system and app/catalog routes, and the app's start-up checks."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from creditgate.db.engine import create_engine
from creditgate.main import NotMigrated, create_app
from creditgate.runtime import Runtime
from creditgate.settings import Settings


async def test_index_and_health(async_client: httpx.AsyncClient) -> None:
    assert (await async_client.get("/")).json()["name"] == "creditgate"
    assert (await async_client.get("/health")).json() == {"status": "ok", "database": "connected", "redis": "disabled"}


async def test_health_reports_redis(cg_settings: Settings, app_factory_redis: str) -> None:
    app = create_app(cg_settings.model_copy(update={"redis_url": app_factory_redis}))
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        assert (await c.get("/health")).json()["redis"] == "connected"
    broken = create_app(cg_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    async with (
        LifespanManager(broken),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=broken), base_url="http://t") as c,
    ):
        response = await c.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "degraded", "database": "connected", "redis": "error"}


@pytest.fixture
def app_factory_redis(redis_service) -> str:  # type: ignore[no-untyped-def]
    return str(redis_service.url)


async def test_health_is_503_when_the_database_is_gone(async_client: httpx.AsyncClient, cg_runtime: Runtime) -> None:
    healthy_engine = cg_runtime.engine
    cg_runtime.engine = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/gone")  # nothing listens on port 1
    try:
        response = await async_client.get("/health")
    finally:
        await cg_runtime.engine.dispose()
        cg_runtime.engine = healthy_engine
    assert response.status_code == 503
    assert response.json()["database"] == "error"


async def test_catalog_routes(async_client: httpx.AsyncClient) -> None:
    models = (await async_client.get("/catalog/models")).json()["data"]
    test_model = next(m for m in models if m["id"] == "test-model")
    assert test_model["pricing"] == {"input_per_1k_usd": "0.001", "output_per_1k_usd": "0.002"}
    providers = (await async_client.get("/catalog/providers")).json()["data"]
    assert providers[0]["name"] == "fake"
    assert providers[0]["configured"] is True


async def test_unknown_route_is_a_json_404(async_client: httpx.AsyncClient) -> None:
    response = await async_client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


async def test_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(NotMigrated, match="creditgate migrate"):
        async with LifespanManager(create_app(settings)):
            pass
