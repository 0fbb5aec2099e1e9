"""A Postgres crash between a request's hold and its settle, on a server that really loses WAL not yet written.

The hold commits asynchronously (``CREDITGATE_HOLD_ASYNC_COMMIT``): the crash takes it, and with it the advance of
the holds' id sequence, so the next request's hold is given the lost hold's id. The invariants are the operator's:
the answered request is paid for in full from its own account, the other tenant's hold is left alone, no credit is
created or lost, and every settle survives the next crash (only the hold's commit is asynchronous).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from creditgate.main import create_app
from creditgate.settings import Settings
from creditgate.testing.auditor import audit_url
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness import FakeProvider, Gate, Reply
from creditgate_harness.fixtures.services import in_ci
from creditgate_harness.oracle import Pricing
from creditgate_harness.services import Service, ServiceUnavailable, start_postgres
from creditgate_harness.services.base import run_sync
from creditgate_harness.services.postgres import create_database, plain_url

pytestmark = pytest.mark.e2e

PRICING = Pricing({"test-model": (Decimal("0.001"), Decimal("0.002"))})
BODY = {"model": "test-model", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
# Commits wait for the disk by default, as in production. The WAL writer wakes every 10 s (its maximum), and neither
# the background writer nor autovacuum writes pages meanwhile (either would flush the WAL first), so an asynchronous
# commit stays in WAL buffers until something flushes them: a synchronous commit, or nothing before the crash.
LOSES_UNWRITTEN_WAL = {
    "synchronous_commit": "on",
    "wal_writer_delay": "10s",
    "bgwriter_lru_maxpages": "0",
    "autovacuum": "off",
}


@pytest.fixture
def server() -> Iterator[Service]:
    """A Postgres of this test's own, configured to lose un-written WAL on a crash."""
    try:
        service = start_postgres("local", settings=LOSES_UNWRITTEN_WAL)
    except ServiceUnavailable as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield service
    service.stop()


@pytest.fixture
def url(server: Service) -> str:
    """A migrated database whose commits are synchronous (``create_database`` makes test databases asynchronous)."""
    name = f"cg_crash_{uuid.uuid4().hex[:8]}"
    url = create_database(server.url, name)
    run_sync(_execute(server.url, f'ALTER DATABASE "{name}" RESET synchronous_commit'))
    migrate(url)
    return url


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _rows(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


@pytest.fixture
async def gateway(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FakeProvider, dict[str, dict[str, str]]]]:
    """The gateway in-process on ``url`` (fast ledger, group commit, asynchronous holds: the defaults), a fake
    upstream, and two tenants with 100 credits each."""
    from creditgate.auth import service as auth
    from creditgate.db.engine import create_engine, create_sessionmaker

    engine = create_engine(url)
    headers = {}
    async with create_sessionmaker(engine)() as session, session.begin():
        for name in ("alice", "bob"):
            user, _ = await auth.create_user(session, email=f"{name}@example.test", credits=100)
            headers[name] = {"Authorization": f"Bearer {await auth.issue_key(session, user_id=user.id)}"}
    await engine.dispose()
    fake = FakeProvider(default=Reply(prompt_tokens=100, completion_tokens=1000))
    app = create_app(
        Settings(_env_file=None, database_url=url),
        catalog=catalog_for_tests(),
        upstream_transport=httpx.ASGITransport(app=fake.app),
    )
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://gw", timeout=60) as client,
    ):
        yield client, fake, headers


async def _at_upstream(
    client: httpx.AsyncClient, fake: FakeProvider, headers: dict[str, str], gate: Gate
) -> asyncio.Task[httpx.Response]:
    """Send a request and return once it waits at the upstream (its hold placed); a request refused on the way (a
    pooled connection the crash ended) is sent again."""
    fake.gate = gate
    for _ in range(5):
        task = asyncio.ensure_future(client.post("/v1/chat/completions", json=BODY, headers=headers))
        async with asyncio.timeout(30):
            while gate.waiting == 0 and not task.done():
                await asyncio.sleep(0.01)
        if not task.done():
            return task
    raise AssertionError(f"the request never reached the upstream: {(await task).text}")


async def test_a_crash_between_hold_and_settle_charges_the_answer_once_and_never_another_tenant(
    server: Service, url: str, gateway: tuple[httpx.AsyncClient, FakeProvider, dict[str, dict[str, str]]]
) -> None:
    client, fake, headers = gateway
    price = PRICING.credits("test-model", prompt_tokens=100, completion_tokens=1000)
    first = await client.post("/v1/chat/completions", json=BODY, headers=headers["alice"])  # held and settled
    assert first.headers["X-Creditgate-Credits-Charged"] == str(price)
    # The first id taken after a checkpoint WAL-logs the sequence in its own transaction: lost with it, not skipped.
    await _execute(url, "CHECKPOINT")

    answered = await _at_upstream(client, fake, headers["alice"], gate_a := Gate())
    [(lost_id, lost_request)] = [
        tuple(r) for r in await _rows(url, "SELECT id, request_id FROM holds WHERE status = 'open'")
    ]
    server.crash()
    assert await _rows(url, f"SELECT id FROM holds WHERE request_id = '{lost_request}'") == [], (
        "the crash kept the hold: its commit was not asynchronous, or something flushed the WAL before the crash"
    )

    other = await _at_upstream(client, fake, headers["bob"], gate_b := Gate())
    [bobs] = await _rows(url, "SELECT id, account_id, status, charged FROM holds WHERE status = 'open'")
    assert bobs["id"] == lost_id, "the lost hold's id was not given again: this run shows nothing"

    gate_a.set()
    response = await answered
    assert response.status_code == 200, response.text
    assert response.headers["X-Creditgate-Credits-Charged"] == str(price)  # answered, so paid: not free
    [still] = await _rows(url, f"SELECT id, account_id, status, charged FROM holds WHERE id = {lost_id}")
    assert tuple(still) == tuple(bobs), "the answered request's settle closed another tenant's hold"

    gate_b.set()
    assert (await other).headers["X-Creditgate-Credits-Charged"] == str(price)
    server.crash()  # every settle committed durably: a second crash keeps each charge
    balances = {
        name: (await client.get("/user/balance", headers=headers[name])).json()["balance"] for name in ("alice", "bob")
    }
    assert balances == {"alice": str(100 - 2 * price), "bob": str(100 - price)}  # three served, three paid
    assert len(fake.served) == 3
    charges = await _rows(url, "SELECT sum(-amount) AS total FROM ledger_entries WHERE type = 'api_usage'")
    assert charges[0]["total"] == 3 * price * 100
    report = audit_url(url)
    assert report.ok, str(report)
