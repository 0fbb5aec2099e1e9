"""One real gateway for the contract module: uvicorn in a subprocess, SQLite, the fake provider on a port.

Its catalog is the test catalog plus ``claude-native``, served by the same fake speaking Anthropic's protocol.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from creditgate.auth import service as auth
from creditgate.catalog.service import Catalog, ModelConfig, ModelRoute, ProviderConfig
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.testing.auditor import audit_url
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate, start_gateway
from creditgate_harness.fakes.providers import FakeProvider
from creditgate_harness.fakes.signers import LAGO_HMAC_KEY, TELEGRAM_BOT_TOKEN
from creditgate_harness.fakes.stripe import FakeStripe
from creditgate_harness.servers import LiveServer, ThreadedServer
from creditgate_harness.services.base import run_sync


@dataclass(frozen=True)
class ContractGateway:
    server: LiveServer
    database_url: str
    admin_key: str
    user_key: str
    catalog: Catalog

    def new_key(self, credits: Decimal | int | str) -> str:
        """A new user with ``credits``; returns their API key."""
        return run_sync(_new_key(self.database_url, Decimal(credits)))


async def _new_key(url: str, credits: Decimal) -> str:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            user, _ = await auth.create_user(session, email=f"{uuid.uuid4().hex[:12]}@contract.test", credits=credits)
            return await auth.issue_key(session, user_id=user.id)
    finally:
        await engine.dispose()


def contract_catalog(fake_url: str) -> Catalog:
    """The test catalog on the fake, plus ``claude-native`` on the same fake as an Anthropic-style provider."""
    base = catalog_for_tests(f"{fake_url}/v1")
    native = ProviderConfig(name="fake-anthropic", kind="anthropic", base_url=f"{fake_url}/v1", api_key="ak-fake")
    claude = ModelConfig(
        id="claude-native",
        owned_by="anthropic",
        input_per_1k=Decimal("0.003"),
        output_per_1k=Decimal("0.015"),
        providers=(ModelRoute(provider="fake-anthropic", model="claude-x"),),
    )
    return Catalog(providers=(*base.providers, native), models=(*base.models, claude))


async def _keys(url: str) -> tuple[str, str]:
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            admin, _ = await auth.create_user(
                session, email="admin@contract.test", is_admin=True, credits=Decimal(10**9)
            )
            user, _ = await auth.create_user(session, email="user@contract.test", credits=Decimal(1000))
            return await auth.issue_key(session, user_id=admin.id), await auth.issue_key(session, user_id=user.id)
    finally:
        await engine.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A ``client_untraced`` test runs with coverage's tracer off in the test's own thread.

    schemathesis's side (generating cases, calling, validating answers) runs none of our code: the gateway is a
    subprocess and the fakes answer from threads of their own, which stay measured. Tracing that thread doubled
    test_openapi.py's CPU (~110 s → ~60 s alone, the same arcs measured for the same seed). A wrapper resumes in
    the frame that paused it, so coverage's stack of frames stays aligned.
    """
    if item.get_closest_marker("client_untraced") is None:
        return (yield)
    tracer = sys.gettrace()
    sys.settrace(None)
    try:
        return (yield)
    finally:
        sys.settrace(tracer)


@pytest.fixture(scope="module")
def contract_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractGateway]:
    """A gateway on a real port with a funded admin key; its ledger is audited when the module ends."""
    root = tmp_path_factory.mktemp("contract")
    url = f"sqlite+aiosqlite:///{root / 'contract.db'}"
    migrate(url)
    admin_key, user_key = run_sync(_keys(url))
    fake = ThreadedServer(FakeProvider().app).start()
    stripe = ThreadedServer(FakeStripe(api_key="sk_test_contract").app).start()
    catalog = contract_catalog(fake.url)
    catalog_path = Path(root / "catalog.json")
    catalog_path.write_text(catalog.model_dump_json())
    env = {
        "CREDITGATE_DATABASE_URL": url,
        "CREDITGATE_CATALOG": str(catalog_path),
        "CREDITGATE_STRIPE_SECRET_KEY": "sk_test_contract",
        "CREDITGATE_STRIPE_WEBHOOK_SECRET": "whsec_contract",
        "CREDITGATE_STRIPE_API_BASE": stripe.url,
        "CREDITGATE_BYOK_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        # Configured, so schemathesis reaches the verifiers (an unconfigured integration answers 503).
        "CREDITGATE_LAGO_HMAC_KEY": LAGO_HMAC_KEY,
        "CREDITGATE_TELEGRAM_BOT_TOKEN": TELEGRAM_BOT_TOKEN,
        # Not under coverage: the conformance suite's worth is its checks, and every route it calls runs in-process
        # under coverage in suites/unit and suites/adversarial. Measuring this server cost ~22 % of the suite's time.
        "COVERAGE_PROCESS_CONFIG": "",
    }
    server = start_gateway(env=env, log_path=root / "gateway.log")
    try:
        yield ContractGateway(server, url, admin_key, user_key, catalog)
    finally:
        server.stop()
        fake.stop()
        stripe.stop()
    report = audit_url(url)
    assert report.ok, str(report)
