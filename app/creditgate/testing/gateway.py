"""The creditgate layer (opt-in): the gateway under test, its data, its ledger audit and flow reports.

Loaded by ``creditgate.testing.plugin`` when the ini file says ``creditgate_fixtures = true`` (this repository
does). Every fixture here is named ``cg_*``. It also fills in the generic layer of the harness
(``creditgate_harness``) for the gateway: ``database_setup`` runs our Alembic migrations, ``database_check``
audits the ledger after every test (unless marked ``no_audit``), and ``asgi_app`` is the gateway, so
``async_client`` calls it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth import service as auth
from creditgate.catalog.service import Catalog
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.db.migrate import upgrade
from creditgate.main import create_app
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.auditor import AuditReport, audit_url
from creditgate.testing.catalog import catalog_for_tests
from creditgate_harness.fakes.modes import Fake, serve
from creditgate_harness.fakes.providers import FakeProvider
from creditgate_harness.fakes.signers import LAGO_HMAC_KEY, TELEGRAM_BOT_TOKEN
from creditgate_harness.fakes.stripe import StripeWebhooks
from creditgate_harness.fixtures.asgi import LiveServerFactory
from creditgate_harness.fixtures.fakes import StripeFake
from creditgate_harness.report import Flow
from creditgate_harness.servers import LiveServer, start_live_server
from creditgate_harness.services.base import run_sync

GATEWAY_APP = "creditgate.main:create_app_from_env()"


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the Alembic head of creditgate's schema."""

    async def main() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    run_sync(main())


def gateway_env(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as ``CREDITGATE_*`` variables, for a gateway in a subprocess."""
    return {f"CREDITGATE_{key.upper()}": str(value) for key, value in settings.items()}


def stripe_settings(fake: StripeFake) -> dict[str, Any]:
    """Gateway settings pointing its Stripe SDK at ``fake`` (in-process: the real URL is intercepted)."""
    base = {} if fake.mode == "inprocess" else {"stripe_api_base": fake.url}
    return {"stripe_secret_key": fake.api_key, "stripe_webhook_secret": fake.webhook_secret, **base}


# -- the generic layer, filled in for the gateway ------------------------------------------------------------
@pytest.fixture(scope="session")
def database_setup() -> Callable[[str], None]:
    """creditgate's schema: its Alembic migrations."""
    return migrate


@pytest.fixture
def database_check(request: pytest.FixtureRequest) -> Callable[[str], str | None] | None:
    """The ledger auditor, after every test (``@pytest.mark.no_audit`` opts out)."""
    if request.node.get_closest_marker("no_audit") is not None:
        return None

    def check(url: str) -> str | None:
        report = audit_url(url)
        return None if report.ok else str(report)

    return check


@pytest.fixture
def asgi_app(cg_app: FastAPI) -> FastAPI:
    """The gateway (``cg_app``), so ``async_client`` calls it."""
    return cg_app


# -- the gateway in-process ----------------------------------------------------------------------------------
@pytest.fixture
def cg_upstream() -> FakeProvider:
    """The fake LLM upstream behind ``cg_app`` (``push(Fault…, Reply…)``, ``calls``)."""
    return FakeProvider()


@pytest.fixture
def cg_catalog() -> Catalog:
    """The catalog the test gateway serves: default models + ``test-model``/``free-model``, all on the fake."""
    return catalog_for_tests()


@pytest.fixture
def cg_settings(request: pytest.FixtureRequest, database_url: str, redis_prefix: str) -> Settings:
    """Gateway settings on this test's database; wired to ``fake_stripe``(``_server``), ``fake_oidc`` and
    ``notification_receiver`` when the test uses them."""
    extra: dict[str, Any] = {"telegram_bot_token": TELEGRAM_BOT_TOKEN, "lago_hmac_key": LAGO_HMAC_KEY}
    for name in ("fake_stripe", "fake_stripe_server"):
        if name in request.fixturenames:
            extra |= stripe_settings(request.getfixturevalue(name))
    if "fake_oidc" in request.fixturenames:
        issuer = request.getfixturevalue("fake_oidc").state
        extra |= {"oidc_issuer": issuer.issuer, "oidc_audience": issuer.client_id}
    if "notification_receiver" in request.fixturenames:
        receiver: Fake[Any] = request.getfixturevalue("notification_receiver")
        extra |= {"notify_webhook_url": receiver.url, "notify_webhook_secret": receiver.state.secret}
        extra |= {"notify_poll_seconds": 0.05}
    return Settings(
        _env_file=None,
        database_url=database_url,
        redis_key_prefix=redis_prefix,
        sweep_interval_seconds=3600,
        upstream_timeout_seconds=5,
        byok_encryption_key=Fernet.generate_key().decode(),
        **extra,
    )


@pytest.fixture
def cg_app(cg_settings: Settings, cg_catalog: Catalog, cg_upstream: FakeProvider) -> FastAPI:
    """The gateway app, its upstream traffic routed in-process to ``cg_upstream``."""
    transport = httpx.ASGITransport(app=cg_upstream.app)
    return create_app(cg_settings, catalog=cg_catalog, upstream_transport=transport)


@pytest.fixture
def cg_runtime(cg_app: FastAPI, async_client: httpx.AsyncClient) -> Runtime:
    """The running gateway's runtime (engine, sessionmaker, catalog) for direct service calls."""
    runtime: Runtime = cg_app.state.runtime
    return runtime


@pytest.fixture
def cg_stripe_webhooks(
    fake_stripe: StripeFake, stripe_webhooks: StripeWebhooks, async_client: httpx.AsyncClient
) -> StripeWebhooks:
    """``stripe_webhooks`` for ``fake_stripe``, delivering to the in-process gateway's ``/billing/webhook``."""
    return stripe_webhooks.to(async_client, "/billing/webhook")


# -- data ------------------------------------------------------------------------------------------------------
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TestUser:
    """A user the harness created, with a plaintext API key."""

    __test__ = False

    id: int
    email: str
    account_id: int
    key: str
    is_admin: bool

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


UserFactory = Callable[..., Awaitable[TestUser]]


@pytest.fixture
async def cg_sessionmaker(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """An async sessionmaker on this test's database, for calling the gateway's services directly."""
    engine = create_engine(database_url, pool_size=60)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def cg_user_factory(cg_sessionmaker: async_sessionmaker[AsyncSession]) -> UserFactory:
    """``await cg_user_factory(credits=…, admin=…, email=…)`` → a ``TestUser`` with a key."""

    async def make(*, credits: Decimal | int | str = 0, admin: bool = False, email: str | None = None) -> TestUser:
        email = email or f"user{next(_counter)}@example.test"
        async with cg_sessionmaker() as session, session.begin():
            user, account = await auth.create_user(session, email=email, is_admin=admin, credits=Decimal(credits))
            key = await auth.issue_key(session, user_id=user.id)
        return TestUser(user.id, email, account.id, key, admin)

    return make


@pytest.fixture
async def cg_funded_user(request: pytest.FixtureRequest, cg_user_factory: UserFactory) -> TestUser:
    """A user with 1,000 credits (or ``request.param`` credits when parametrized indirectly)."""
    return await cg_user_factory(credits=getattr(request, "param", 1000))


@pytest.fixture
def cg_api_key(cg_funded_user: TestUser) -> str:
    """The funded user's API key."""
    return cg_funded_user.key


@pytest.fixture
async def cg_admin_user(cg_user_factory: UserFactory) -> TestUser:
    """A user with the admin role and no credits."""
    return await cg_user_factory(admin=True)


@pytest.fixture
def cg_ledger_auditor(database_url: str) -> Callable[[], AuditReport]:
    """Call it to audit this test's ledger now (it also runs by itself after the test)."""
    return lambda: audit_url(database_url)


# -- the gateway on real ports -------------------------------------------------------------------------------
GatewayFactory = Callable[..., LiveServer]


@pytest.fixture
def cg_upstream_server(cg_upstream: FakeProvider) -> Iterator[Fake[FakeProvider]]:
    """``cg_upstream`` on a loopback port (``.url`` ends in ``/v1``), for gateways in subprocesses."""
    fake, server = serve(cg_upstream, cg_upstream.app, path="/v1")
    yield fake
    server.stop()


@pytest.fixture
def cg_live_server_factory(
    database_url: str,
    redis_prefix: str,
    cg_upstream_server: Fake[FakeProvider],
    live_server_factory: LiveServerFactory,
    tmp_path: Path,
) -> GatewayFactory:
    """``cg_live_server_factory(workers=2, env={…})``: a gateway in a subprocess on this test's database."""
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(catalog_for_tests(cg_upstream_server.url).model_dump_json())
    base = gateway_env(
        {
            "database_url": database_url,
            "redis_key_prefix": redis_prefix,
            "catalog": catalog_path,
            "upstream_timeout_seconds": 10,
        }
    )

    def start(*, workers: int = 1, env: dict[str, str] | None = None) -> LiveServer:
        return live_server_factory(app=GATEWAY_APP, env={**base, **(env or {})}, workers=workers, ready_path="/health")

    return start


@pytest.fixture
def cg_live_server(cg_live_server_factory: GatewayFactory) -> LiveServer:
    """The gateway in a subprocess (real uvicorn) on this test's database: ``.url``; logs shown on failure."""
    return cg_live_server_factory()


@pytest.fixture
def cg_flow(request: pytest.FixtureRequest) -> Flow:
    """Record this test's steps and balances for ``--flow-report``."""
    return Flow.for_item(request)


def start_gateway(
    *, env: dict[str, str], log_path: Path, workers: int = 1, port: int | None = None, timeout: float = 45
) -> LiveServer:
    """creditgate under uvicorn in a subprocess (``env``: ``CREDITGATE_*``); returns once ``/health`` is 200."""
    return start_live_server(
        GATEWAY_APP, env=env, log_path=log_path, workers=workers, port=port, ready_path="/health", timeout=timeout
    )


__all__ = [
    "GATEWAY_APP",
    "GatewayFactory",
    "TestUser",
    "UserFactory",
    "gateway_env",
    "migrate",
    "start_gateway",
    "stripe_settings",
]
