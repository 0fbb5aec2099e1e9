"""The loopback stack a load or chaos run starts, and the faults it can inject into it.

Postgres and Redis from the harness (for chaos runs the *local* backend: a private initdb'd server and a private
redis-server, so restarting them disturbs nobody), the fake upstream and the fake Stripe as servers in their own
processes, the gateway under uvicorn with N workers, and an admin key made directly in the database (the one thing
the API cannot make). Everything else is provisioned through the admin API (suites/load/provision.py).
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate, start_gateway
from creditgate_harness.load.runner import spawn, wait_http
from creditgate_harness.servers import LiveServer
from creditgate_harness.services import Service, start_postgres, start_redis
from creditgate_harness.services.base import free_port, run_sync
from creditgate_harness.services.postgres import create_database, drop_database

WEBHOOK_SECRET = "whsec_load"
STRIPE_KEY = "sk_test_load"
HOLD_TTL = 30  # the gateway's minimum: stuck holds come back after 30 s
SWEEP_INTERVAL = 1.0


async def _admin_key(url: str) -> str:
    engine = create_engine(url, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            admin, _ = await auth.create_user(
                session, email=f"load-admin-{uuid.uuid4().hex[:6]}@load.invalid", is_admin=True
            )
            return await auth.issue_key(session, user_id=admin.id)
    finally:
        await engine.dispose()


@dataclass
class Stack:
    out: Path
    workers: int = 2
    backend: str = "auto"  # harness backends for Postgres and Redis; "local" for chaos
    postgres: Service | None = None
    redis: Service | None = None
    database: str = ""
    database_url: str = ""
    admin_key: str = ""
    gateway: LiveServer | None = None
    port: int = 0
    upstream_url: str = ""  # the fake provider's base (no /v1)
    stripe_url: str = ""
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> Stack:
        self.postgres = start_postgres(self.backend)
        self.redis = start_redis(self.backend)
        self.database = f"cg_load_{uuid.uuid4().hex[:8]}"
        self.database_url = create_database(self.postgres.url, self.database)
        migrate(self.database_url)
        self.admin_key = run_sync(_admin_key(self.database_url))
        up, st = free_port(), free_port()
        self._children.append(
            spawn("creditgate_harness.fakes.providers", "--port", str(up), log=self.out / "upstream.log")
        )
        self._children.append(
            spawn(
                "creditgate_harness.fakes.stripe",
                "--port",
                str(st),
                "--api-key",
                STRIPE_KEY,
                log=self.out / "stripe.log",
            )
        )
        self.upstream_url, self.stripe_url = f"http://127.0.0.1:{up}", f"http://127.0.0.1:{st}"
        wait_http(self.upstream_url + "/v1/models")
        wait_http(self.stripe_url + "/_test/payments")
        catalog = self.out / "catalog.json"
        catalog.write_text(catalog_for_tests(f"{self.upstream_url}/v1").model_dump_json())
        self.port = free_port()
        self.start_gateway()
        return self

    def env(self) -> dict[str, str]:
        assert self.redis is not None
        return {
            "CREDITGATE_DATABASE_URL": self.database_url,
            "CREDITGATE_REDIS_URL": self.redis.url,
            "CREDITGATE_REDIS_KEY_PREFIX": f"{self.database}:",
            "CREDITGATE_CATALOG": str(self.out / "catalog.json"),
            "CREDITGATE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CREDITGATE_STRIPE_SECRET_KEY": STRIPE_KEY,
            "CREDITGATE_STRIPE_API_BASE": self.stripe_url,
            "CREDITGATE_HOLD_TTL_SECONDS": str(HOLD_TTL),
            "CREDITGATE_SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL),
            "CREDITGATE_UPSTREAM_TIMEOUT_SECONDS": "3",
            "CREDITGATE_DEFAULT_CREDIT_INCREMENT": "0.01",
            "CREDITGATE_BREAKER_COOLDOWN_SECONDS": "2",  # an open circuit is retried after 2 s (default 30)
        }

    def start_gateway(self) -> None:
        self.gateway = start_gateway(
            env=self.env(), log_path=self.out / "gateway.log", workers=self.workers, port=self.port
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for child in self._children:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.postgres is not None:
            try:
                drop_database(self.postgres.url, self.database)
            except Exception as exc:  # a Postgres that did not come back: the private server goes anyway
                print(f"could not drop {self.database}: {exc}")
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()

    # -- faults ------------------------------------------------------------------------------------------------
    # The harness's own fault API, as any project's tests use it (suites/chaos/run.py): ``self.gateway``'s
    # ``kill_worker()``/``kill_all()``/``restart()``, ``self.postgres``/``self.redis``'s ``restart(down=…)``, and
    # a storm on the fake upstream (``FakeProviderClient(self.upstream_url).storm(…)``).
