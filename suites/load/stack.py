"""The loopback stack a load or chaos run starts, and the faults it can inject into it.

Postgres and Redis from the harness (for chaos runs the *local* backend: a private initdb'd server and a private
redis-server, so restarting them disturbs nobody), the fake upstream and the fake Stripe as servers in their own
processes, the gateway under uvicorn with N workers, and an admin key made directly in the database (the one thing
the API cannot make). Everything else is provisioned through the admin API (suites/load/provision.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate, start_gateway
from creditgate_harness.servers import LiveServer
from creditgate_harness.services import Service, start_postgres, start_redis
from creditgate_harness.services.base import free_port, run_sync
from creditgate_harness.services.postgres import create_database, drop_database, find_bin, plain_url

WEBHOOK_SECRET = "whsec_load"
STRIPE_KEY = "sk_test_load"
HOLD_TTL = 30  # the gateway's minimum: stuck holds come back after 30 s
SWEEP_INTERVAL = 1.0


def wait_http(url: str, *, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.05)


def spawn(module: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT)


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
    _redis_process: subprocess.Popen[bytes] | None = None

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
        if self._redis_process is not None:
            self._redis_process.terminate()
            self._redis_process.wait(10)
        if self.postgres is not None:
            try:
                drop_database(self.postgres.url, self.database)
            except Exception as exc:  # a Postgres that did not come back: the private server goes anyway
                print(f"could not drop {self.database}: {exc}")
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()

    # -- faults ------------------------------------------------------------------------------------------------
    def worker_pids(self) -> list[int]:
        assert self.gateway is not None
        assert self.gateway.process is not None
        found = subprocess.run(
            ["pgrep", "-P", str(self.gateway.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in found.stdout.split()]

    def kill_one_worker(self) -> int:
        """``kill -9`` one uvicorn worker of this stack's gateway; uvicorn's supervisor starts a new one."""
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_gateway(self) -> None:
        """``kill -9`` the supervisor and every worker of this stack's gateway (nothing else)."""
        assert self.gateway is not None
        assert self.gateway.process is not None
        pids = self.worker_pids()
        self.gateway.process.send_signal(signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.gateway.process.wait()

    def _pg(self) -> tuple[str, dict[str, Any], str]:
        """pg_ctl, the user the private server runs as, its data directory."""
        if self.postgres is None or self.postgres.backend != "local":
            raise RuntimeError("only a private Postgres (the local backend) is restarted")
        data = run_sync(_data_directory(self.postgres.url))
        owner = os.stat(data).st_uid
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0 and owner != 0:
            entry = pwd.getpwuid(owner)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        return pg_ctl, as_user, data

    def stop_postgres(self) -> tuple[str, dict[str, Any], str, str]:
        """Fast shutdown of the private Postgres; returns what ``start_postgres_again`` needs."""
        pg_ctl, as_user, data = self._pg()
        opts = Path(data, "postmaster.opts").read_text()
        args = shlex.split(opts)[1:]  # after the postgres binary: "-D" data, then the -p/-k/-c options
        options = " ".join(shlex.quote(a) for a in args if a not in ("-D", data))
        subprocess.run(
            [pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], check=True, capture_output=True, cwd="/", **as_user
        )
        return pg_ctl, as_user, data, options

    def start_postgres_again(self, saved: tuple[str, dict[str, Any], str, str]) -> None:
        pg_ctl, as_user, data, options = saved
        log = str(Path(data).parent / "log")
        subprocess.run(
            [pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            cwd="/",
            **as_user,
        )

    def stop_redis(self) -> None:
        """SHUTDOWN NOSAVE on the private Redis (the harness's process exits)."""
        import redis

        if self.redis is None or self.redis.backend != "local":
            raise RuntimeError("only a private Redis (the local backend) is restarted")
        client = redis.Redis.from_url(self.redis.url)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()

    def start_redis_again(self) -> None:
        """A fresh redis-server on the same port (counters start empty, as after a real restart)."""
        assert self.redis is not None
        port = self.redis.url.rsplit(":", 1)[1].split("/")[0]
        with (self.out / "redis.log").open("ab") as log:
            self._redis_process = subprocess.Popen(
                ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        import redis

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.redis.url, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not come back")

    def script_upstream(self, steps: list[dict[str, Any]]) -> None:
        httpx.post(f"{self.upstream_url}/_fake/script", json=steps, timeout=10).raise_for_status()

    def clear_upstream_script(self) -> None:
        httpx.delete(f"{self.upstream_url}/_fake/script", timeout=10).raise_for_status()


async def _data_directory(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(plain_url(url))
    try:
        return str(await conn.fetchval("SHOW data_directory"))
    finally:
        await conn.close()
