"""harness faults: a live server's workers killed and replaced, a private Postgres/Redis restarted on the same URL,
upstream storms through the fake provider's script (in-process and over /_fake on a server)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from creditgate_harness.fakes.providers import FakeProvider, FakeProviderClient, Fault, Reply, Storm
from creditgate_harness.servers import LiveServer, ThreadedServer, start_live_server
from creditgate_harness.services import NotRestartable, Service, ServiceUnavailable
from creditgate_harness.services.base import run_sync
from creditgate_harness.services.postgres import plain_url, server_version

TINY_APP = """
import os
import pathlib
import time

if pathlib.Path(__file__).with_name("slow").exists():  # a worker started after the test made this file
    time.sleep(1.0)  # imports slowly, like a real app

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def _tiny_server(tmp_path: Path, *, workers: int) -> LiveServer:
    (tmp_path / "tiny_app.py").write_text(TINY_APP)
    return start_live_server(
        "tiny_app:app", env={"PYTHONPATH": str(tmp_path)}, log_path=tmp_path / "server.log", workers=workers
    )


def _serving_pid(server: LiveServer, *, timeout: float = 5) -> int:
    return int(httpx.get(server.url, timeout=timeout).text)


# -- a live server's workers ---------------------------------------------------------------------------------
def test_a_killed_worker_is_replaced_and_a_crashed_server_restarts_on_its_port(tmp_path: Path) -> None:
    server = _tiny_server(tmp_path, workers=2)
    try:
        workers = server.worker_pids()
        assert len(workers) == 2  # uvicorn's workers only: not its multiprocessing resource tracker
        assert _serving_pid(server) in workers

        (tmp_path / "slow").touch()
        killed = server.kill_worker()
        assert killed == workers[0]
        now = server.worker_pids()
        assert len(now) == 2
        assert killed not in now
        assert workers[1] in now  # the other worker was not touched
        (new,) = set(now) - set(workers)
        os.kill(workers[1], signal.SIGSTOP)  # only the new worker can answer now: it must already serve
        try:
            assert _serving_pid(server, timeout=0.8) == new
        finally:
            os.kill(workers[1], signal.SIGCONT)
        (tmp_path / "slow").unlink()

        assert server.process is not None
        supervisor = server.process.pid
        gone = server.kill_all()
        assert gone[0] == supervisor
        assert set(now) <= set(gone)  # and any other child (uvicorn's resource tracker): nothing is left running
        assert server.process.returncode == -signal.SIGKILL
        assert server.worker_pids() == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url, timeout=2)

        server.restart()
        again = server.worker_pids()
        assert len(again) == 2
        assert not set(again) & set(now)
        assert _serving_pid(server) in again
    finally:
        server.stop()


def test_kill_worker_says_why_it_cannot_on_one_worker_or_a_stranger_pid(tmp_path: Path) -> None:
    one = LiveServer("http://127.0.0.1:1", tmp_path / "log", {}, workers=1)
    with pytest.raises(RuntimeError, match=r"one worker and no supervisor.*workers=2.*kill_all\(\).*restart\(\)"):
        one.kill_worker()
    two = LiveServer("http://127.0.0.1:1", tmp_path / "log", {}, workers=2)
    with pytest.raises(RuntimeError, match="no worker to kill"):
        two.kill_worker(sig=signal.SIGTERM)
    with pytest.raises(ValueError, match="at least one worker"):
        start_live_server("tiny_app:app", env={}, log_path=tmp_path / "log", workers=0)


# -- Postgres and Redis taken down and brought back ----------------------------------------------------------
async def _scalar(url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(plain_url(url), timeout=5)
    try:
        return await (conn.execute(sql) if ";" in sql else conn.fetchval(sql))
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_setup() -> Any:
    """This module's schema: one table (the gateway's migrations are not what these tests are about)."""
    return lambda url: run_sync(_scalar(url, "CREATE TABLE kept (n int);"))


def test_a_restarted_private_postgres_answers_on_its_url_with_its_data(
    private_postgres: Service, private_database_url: str
) -> None:
    assert private_postgres.backend in ("local", "docker")
    assert private_postgres.restartable
    assert make_url(private_database_url).port == make_url(private_postgres.url).port
    run_sync(_scalar(private_database_url, "INSERT INTO kept VALUES (7);"))
    started = run_sync(_scalar(private_postgres.url, "SELECT pg_postmaster_start_time()"))

    with private_postgres.outage(), pytest.raises(ServiceUnavailable, match="cannot connect"):
        server_version(private_postgres.url)

    assert run_sync(_scalar(private_postgres.url, "SELECT pg_postmaster_start_time()")) > started
    assert run_sync(_scalar(private_database_url, "SELECT sum(n) FROM kept")) == 7
    private_postgres.restart(down=0.1)
    assert run_sync(_scalar(private_database_url, "SELECT sum(n) FROM kept")) == 7


def test_a_restarted_private_redis_answers_on_its_url_and_comes_back_empty(private_redis: Service) -> None:
    assert private_redis.restartable
    client = redis.Redis.from_url(private_redis.url, socket_timeout=3)
    try:
        client.set("faults:kept", "1")
        with private_redis.outage(), pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(private_redis.url, socket_timeout=1).ping()
        assert client.ping()  # the same client reconnects on its own
        assert client.get("faults:kept") is None  # nothing on disk: a restarted harness Redis is empty
        client.set("faults:kept", "2")
        private_redis.restart()
        assert client.get("faults:kept") is None
    finally:
        client.close()


def test_an_external_service_is_not_restarted_and_the_error_says_what_to_use() -> None:
    external = Service("postgres", "postgresql://postgres@db.invalid/postgres", "16.4", "external")
    assert not external.restartable
    with pytest.raises(NotRestartable, match=r"did not start this server.*HARNESS_POSTGRES_URL.*private_postgres"):
        external.restart()
    with pytest.raises(NotRestartable, match="private_redis"), Service("redis", "redis://x", "7", "external").outage():
        pass  # pragma: no cover - never entered
    stopped = Service("redis", "redis://x", "7", "local", lambda: None, lambda: None, lambda: None)
    stopped.stop()
    with pytest.raises(NotRestartable, match="stopped for good"):
        stopped.restart()


def test_the_session_services_are_restartable_exactly_when_the_harness_owns_them(
    postgres_service: Service, redis_service: Service
) -> None:
    for service in (postgres_service, redis_service):
        assert service.restartable is (service.backend != "external")


# -- upstream storms ------------------------------------------------------------------------------------------
def _statuses(client: httpx.Client, n: int) -> list[int]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    return [client.post("/v1/chat/completions", json=body).status_code for _ in range(n)]


@pytest.fixture
def upstream() -> Any:
    provider = FakeProvider()
    server = ThreadedServer(provider.app).start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield provider, client, server.url
    server.stop()


def test_a_storm_fails_exactly_its_share_of_calls_then_ends(upstream: Any) -> None:
    provider, client, _ = upstream
    storm = provider.storm(Fault.status_code(503), rate=0.5, calls=10)
    assert _statuses(client, 12) == [503, 200] * 5 + [200, 200]
    assert storm.given == Counter({Fault.status_code(503): 5})
    assert storm.passed == 5
    assert not storm.active


def test_a_mixed_storm_keeps_every_share_and_the_script_comes_first(upstream: Any) -> None:
    provider, client, _ = upstream
    provider.push(Fault.status_code(418), Reply(content="scripted"))
    mix = {Fault.status_code(503): 0.2, Fault.rate_limited(2): 0.05, Fault.malformed(): 0.05}
    with provider.storm(mix) as storm:
        statuses = _statuses(client, 42)
    assert statuses[:2] == [418, 200]  # the script's two steps, not the storm's
    assert Counter(statuses[2:]) == Counter({200: 28 + 2, 503: 8, 429: 2})  # malformed is a 200 with no JSON
    assert storm.given == Counter({Fault.status_code(503): 8, Fault.rate_limited(2): 2, Fault.malformed(): 2})
    assert _statuses(client, 3) == [200, 200, 200]  # ended with its with block


def test_a_timed_storm_ends_by_itself_and_a_seeded_one_repeats(upstream: Any) -> None:
    provider, client, _ = upstream
    provider.storm(Fault.status_code(500), seconds=0.3)
    assert _statuses(client, 2) == [500, 500]
    import time

    time.sleep(0.35)
    assert _statuses(client, 2) == [200, 200]

    runs = []
    for _ in range(2):
        provider.storm(Fault.status_code(503), rate=0.3, calls=30, seed=7)
        runs.append(_statuses(client, 30))
    assert runs[0] == runs[1]
    assert 0 < runs[0].count(503) < 30


def test_a_storm_on_a_server_of_its_own_through_the_client(upstream: Any) -> None:
    provider, client, url = upstream
    with FakeProviderClient(f"{url}/v1") as remote:
        started = remote.storm({Fault.status_code(503): 0.25, Fault.cut_stream(1): 0.25}, calls=8)
        assert started["active"]
        assert [f["fault"] for f in started["faults"]] == [
            {"fault": "status", "status": 503},
            {"fault": "cut", "after_chunks": 1},
        ]
        statuses = _statuses(client, 8)
        state = remote.storm_state()
        assert state is not None
        assert [f["given"] for f in state["faults"]] == [2, 2]
        assert state["passed"] == 4
        assert statuses.count(503) == 2  # a cut is a 200 whose stream stops early
        assert not state["active"]

        remote.storm(Fault.hang(0.01))
        assert remote.end_storm()["active"] is False  # type: ignore[index]
        assert remote.push(Fault.status_code(502), Reply(content="after")) == 2
        assert _statuses(client, 2) == [502, 200]
        assert len(remote.served()) == 8 - 2 + 1  # served: every 200 that was a completion (cuts included)

        with pytest.raises(ValueError, match=r"add up to 1\.5"):
            remote.storm({Fault.status_code(503): 0.75, Fault.malformed(): 0.75})
        with pytest.raises(ValueError, match="fault 'flood'"):
            remote._post("/_fake/script", [{"fault": "flood"}])
    assert isinstance(provider.last_storm, Storm)


def test_a_storm_refuses_what_it_cannot_do() -> None:
    provider = FakeProvider()
    with pytest.raises(ValueError, match=r"add up to 1\.2"):
        provider.storm({Fault.status_code(503): 0.6, Fault.malformed(): 0.6})
    with pytest.raises(ValueError, match="rate= is for a single fault"):
        provider.storm({Fault.status_code(503): 0.5}, rate=0.5)
    with pytest.raises(ValueError, match="each share must be > 0"):
        provider.storm(Fault.status_code(503), rate=0)
    with pytest.raises(ValueError, match="seconds=0"):
        provider.storm(Fault.status_code(503), seconds=0)
    with pytest.raises(ValueError, match="calls=0"):
        provider.storm(Fault.status_code(503), calls=0)
    assert provider.end_storm() is None
    provider.storm(Fault.status_code(503))
    provider.reset()
    assert provider.last_storm is None
