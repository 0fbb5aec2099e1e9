"""The same credit flow on Postgres from each backend: external URL, local binaries, Docker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from creditgate.main import create_app
from creditgate.settings import Settings
from creditgate.testing.auditor import audit_url
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.fixtures.services import in_ci
from creditgate_harness.services import ServiceUnavailable, start_postgres
from creditgate_harness.services.postgres import create_database, drop_database

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["external", "local", "docker"])
def backend_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    try:
        service = start_postgres(request.param)
    except ServiceUnavailable as exc:
        # Docker is optional everywhere; external and local are required under CI=true.
        if in_ci() and request.param != "docker":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    name = f"cg_backend_{uuid.uuid4().hex[:8]}"
    url = create_database(service.url, name)
    migrate(url)
    try:
        yield url
        report = audit_url(url)
        assert report.ok, str(report)
    finally:
        drop_database(service.url, name)
        service.stop()


async def test_credit_flow_on_each_backend(backend_database_url: str) -> None:
    from creditgate.auth import service as auth
    from creditgate.db.engine import create_engine, create_sessionmaker

    engine = create_engine(backend_database_url)
    async with create_sessionmaker(engine)() as session, session.begin():
        user, _ = await auth.create_user(session, email="b@example.test", credits=100)
        key = await auth.issue_key(session, user_id=user.id)
    await engine.dispose()

    fake = FakeProvider(default=Reply(prompt_tokens=100, completion_tokens=1000))
    app = create_app(
        Settings(_env_file=None, database_url=backend_database_url),
        catalog=catalog_for_tests(),
        upstream_transport=httpx.ASGITransport(app=fake.app),
    )
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "test-model", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://gw") as client,
    ):
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200
        # (0.1 × $0.001 + 1 × $0.002) × 1.5 / $0.01 = 0.315 → 0.4 credits
        assert response.headers["X-Creditgate-Credits-Charged"] == "0.40"
        assert (await client.get("/user/balance", headers=headers)).json()["balance"] == "99.60"
