"""Gateway overhead: the fake upstream called directly and through the gateway (1 worker, metering + ledger on).

Prints RPS and p50/p99 latency at concurrency 1 and 32 for both, the RPS ratio and the added latency,
on SQLite and (when available) Postgres. Beside them, the LiteLLM proxy (1 worker, no database) routed to the same
fake upstream, measured in the same run so the ratios compare one machine state: its RPS against the upstream's, its
added latency, and the gateway's RPS as a multiple of LiteLLM's (bench/litellm_proxy.py installs it into its own
venv; when it cannot, one line says so and the rest runs). Run on demand: `nox -s bench` or `python -m bench.overhead`.
Everything runs on loopback. The load comes from wrk when it is installed (``apt-get install wrk``; one C thread),
else from this process's httpx client, which tops out below what the upstream and the gateway serve (it says which).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx

from bench.common import fake_upstream, postgres_database
from bench.litellm_proxy import HEADERS as LITELLM_HEADERS
from bench.litellm_proxy import litellm_proxy
from bench.servers import cpu_seconds
from bench.servers import start as start_server
from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.db.models import Account, Membership, Org
from creditgate.ledger import service as ledger
from creditgate.quotas.service import load_plans, set_plan
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.servers import LiveServer, start_live_server
from creditgate_harness.services import ServiceUnavailable
from creditgate_harness.services.base import run_sync

MODEL = "test-model"
BODY = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "bench"}]}


KEYS = 32  # one per concurrent client at c=32
Cell = tuple[float, float, float, float]  # rps, p50 ms, p99 ms, server CPU µs per request (nan: not measured)


async def _keys(url: str, *, shared_org: bool) -> list[str]:
    """``KEYS`` API keys on the enterprise plan: each user with an account of their own, or (``shared_org``) all
    members of one org drawing on its one balance, each with an allocation."""
    engine = create_engine(url)
    keys = []
    async with create_sessionmaker(engine)() as s, s.begin():
        plans = load_plans()
        org_id = None
        if shared_org:
            org = Org(name="bench")
            s.add(org)
            await s.flush()
            account = Account(org_id=org.id)
            s.add(account)
            await s.flush()
            await ledger.post_entry(s, account_id=account.id, amount=Decimal(10**9), type="purchase")
            await set_plan(s, subject=f"org:{org.id}", plan="enterprise", plans=plans)
            org_id = org.id
        for _ in range(KEYS):
            credits = Decimal(0 if shared_org else 10**9)
            user, _ = await auth.create_user(s, email=f"bench-{uuid.uuid4().hex[:8]}@example.test", credits=credits)
            if org_id is not None:
                s.add(Membership(org_id=org_id, user_id=user.id, allocation=10**11))
            else:
                await set_plan(s, subject=f"user:{user.id}", plan="enterprise", plans=plans)
            keys.append(await auth.issue_key(s, user_id=user.id))
    await engine.dispose()
    return keys


WRK = shutil.which("wrk")
WRK_SCRIPT = """
local body = %s
local headers = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, headers[(n %% #headers) + 1], body)
end
"""
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _lua(value: str) -> str:
    return "[==[" + value + "]==]"


def measure_wrk(
    url: str, headers: list[dict[str, str]], *, concurrency: int, seconds: float, pid: int | None = None
) -> Cell:
    """RPS, p50 and p99 (ms) as wrk (C, one thread) measures them; requests take the header sets in turn; with
    ``pid``, the CPU time that server process (and its children) spent per request. Any response other than 2xx
    fails the measurement."""
    sets = ",".join(
        "{" + ",".join(f"[ {_lua(k)} ]={_lua(v)}" for k, v in {**h, "Content-Type": "application/json"}.items()) + "}"
        for h in headers
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (_lua(json.dumps(BODY)), sets))
    assert WRK is not None
    warm = [WRK, "-t1", f"-c{concurrency}", "-d1s", "--timeout", "60s", "-s", script.name, url]
    subprocess.run(warm, capture_output=True, check=True)
    command = [
        WRK,
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "60s",
        "--latency",
        "-s",
        script.name,
        url,
    ]
    cpu_before = cpu_seconds(pid) if pid is not None else math.nan
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else math.nan
    if (bad := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) or "Socket errors" in out:
        raise AssertionError(f"wrk saw failures ({bad.group(1) if bad else 'socket errors'}):\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    quantile = {q: float(v) * UNIT_MS[u] for q, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", out)}
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, quantile["50"], quantile["99"], cpu / done * 1e6


async def measure(
    url: str,
    headers: dict[str, str] | list[dict[str, str]],
    *,
    concurrency: int,
    requests: int,
    pid: int | None = None,
) -> Cell:
    """RPS, p50 and p99 (ms) of ``requests`` requests from ``concurrency`` clients; client i sends ``headers[i]``.
    wrk when it is installed (a Python client tops out below what the upstream and the gateway can serve), for
    ``requests`` / 100 seconds (at least 3); else this process's httpx client."""
    if WRK is not None:
        per_client = headers if isinstance(headers, list) else [headers]
        return measure_wrk(url, per_client, concurrency=concurrency, seconds=max(3.0, requests / 100), pid=pid)
    per_client = headers if isinstance(headers, list) else [headers]
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for i in range(min(20, requests)):  # warm up
            await client.post(url, json=BODY, headers=per_client[i % len(per_client)])
        queue = iter(range(requests))

        async def worker(own: dict[str, str]) -> None:
            for _ in queue:
                started = time.perf_counter()
                response = await client.post(url, json=BODY, headers=own)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        started, cpu_before = time.perf_counter(), cpu_seconds(pid) if pid is not None else math.nan
        await asyncio.gather(*(worker(per_client[i % len(per_client)]) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else math.nan
    return requests / elapsed, statistics.median(latencies) * 1000, p99 * 1000, cpu / requests * 1e6


# Beside the default (group commit: one function call per money step for every request waiting), in the same run:
# one call per request, httpx's own connection pool to the upstream (not aiohttp's), the default with one org balance
# shared by every client, the ORM path with nothing cached (the code before the hot-path work), and the default under
# the other ASGI server `creditgate serve --server` offers.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "granian": {},
    "one call per request": {"CREDITGATE_GROUP_COMMIT": "false"},
    "httpx pool": {"CREDITGATE_UPSTREAM_CLIENT": "httpx"},
    "shared org": {},
    "orm no caches": {"CREDITGATE_FAST_LEDGER": "false", "CREDITGATE_CACHE_SECONDS": "0"},
}
SQLITE_VARIANTS = ("default", "orm no caches")  # no round trips to save: neither function calls nor group commit
SERVER = {"granian": "granian"}  # the variants served by another server than the default, uvicorn


def _measure_litellm(litellm: LiveServer, concurrency: int, requests: int) -> Cell | None:
    """LiteLLM's cell, or ``None`` after one line saying why: the comparison failing mid-run must not end the bench."""
    try:
        return asyncio.run(
            measure(f"{litellm.url}/v1/chat/completions", LITELLM_HEADERS, concurrency=concurrency, requests=requests)
        )
    except (AssertionError, httpx.HTTPError, subprocess.CalledProcessError) as exc:
        print(f"LiteLLM: skipped at concurrency {concurrency} ({type(exc).__name__}: {str(exc)[:200]})")
        return None


def _print_litellm(rows: list[tuple[int, Cell, Cell, Cell]]) -> None:
    """LiteLLM's rows under the table: its RPS as a share of the upstream's, its added p50, and the gateway's RPS as
    a multiple of LiteLLM's (the comparison the issue asks for)."""
    print(
        f"{'concurrency':>11} {'litellm rps':>12} {'ratio':>6} {'litellm p50':>12} {'added p50':>10} "
        f"{'litellm p99':>12} {'gw/litellm rps':>15}"
    )
    for concurrency, (d_rps, d_p50, *_), (g_rps, *_), (l_rps, l_p50, l_p99, _) in rows:
        print(
            f"{concurrency:>11} {l_rps:>12.0f} {l_rps / d_rps:>6.0%} {l_p50:>10.2f}ms {l_p50 - d_p50:>8.2f}ms "
            f"{l_p99:>10.2f}ms {g_rps / l_rps:>14.2f}×"
        )


def python_floor(fake_url: str, requests: int) -> None:
    """bench/python_floor.py (a bare ASGI forwarder, one uvicorn worker) beside the upstream, with httpx's own pool,
    httpx on aiohttp's pool (httpx-aiohttp: the gateway's default) and bare aiohttp: the most RPS a proxy written in
    Python gets on this machine, whatever it does per request, and what the upstream client alone is worth."""
    print(f"\nPython floor (bare ASGI forwarder: no framework, auth or database): {requests} requests per cell")
    print(f"{'client':>13} {'concurrency':>11} {'direct rps':>11} {'floor rps':>10} {'ratio':>6} {'added p50':>10}")
    for client in ("httpx", "httpx-aiohttp", "aiohttp"):
        floor = start_live_server(
            "bench.python_floor:app",
            env={"FLOOR_UPSTREAM": fake_url, "FLOOR_CLIENT": client},
            log_path=Path(tempfile.mkdtemp()) / "floor.log",
            ready_path="/v1/models",
        )
        try:
            for concurrency in (1, 32):
                d_rps, d_p50, *_ = asyncio.run(
                    measure(f"{fake_url}/v1/chat/completions", {}, concurrency=concurrency, requests=requests)
                )
                f_rps, f_p50, *_ = asyncio.run(
                    measure(f"{floor.url}/v1/chat/completions", {}, concurrency=concurrency, requests=requests)
                )
                print(
                    f"{client:>13} {concurrency:>11} {d_rps:>11.0f} {f_rps:>10.0f} {f_rps / d_rps:>6.0%} "
                    f"{f_p50 - d_p50:>8.2f}ms"
                )
        finally:
            floor.stop()


def run(
    database_url: str,
    label: str,
    fake_url: str,
    requests: int,
    variant: str = "default",
    litellm: LiveServer | None = None,
) -> None:
    migrate(database_url)
    keys = run_sync(_keys(database_url, shared_org=variant == "shared org"))
    root = Path(tempfile.mkdtemp())
    (root / "catalog.json").write_text(catalog_for_tests(f"{fake_url}/v1").model_dump_json())
    env = {"CREDITGATE_DATABASE_URL": database_url, "CREDITGATE_CATALOG": str(root / "catalog.json")}
    server = SERVER.get(variant, "uvicorn")
    gateway = start_server(server, env=env | VARIANTS[variant], log_path=root / "gateway.log")
    assert gateway.process is not None
    litellm_rows: list[tuple[int, Cell, Cell, Cell]] = []
    try:
        print(f"\n{label} ({variant}): {requests} requests per cell")
        print(
            f"{'concurrency':>11} {'direct rps':>11} {'gateway rps':>12} {'ratio':>6} {'direct p50':>11} "
            f"{'gw p50':>8} {'added p50':>10} {'direct p99':>11} {'gw p99':>8} {'gw CPU/req':>11}"
        )
        for concurrency in (1, 32):
            d_rps, d_p50, d_p99, _ = asyncio.run(
                measure(f"{fake_url}/v1/chat/completions", {}, concurrency=concurrency, requests=requests)
            )
            g_rps, g_p50, g_p99, g_cpu = asyncio.run(
                measure(
                    f"{gateway.url}/v1/chat/completions",
                    [{"Authorization": f"Bearer {key}"} for key in keys],
                    concurrency=concurrency,
                    requests=requests,
                    pid=gateway.process.pid,
                )
            )
            print(
                f"{concurrency:>11} {d_rps:>11.0f} {g_rps:>12.0f} {g_rps / d_rps:>6.0%} {d_p50:>9.2f}ms "
                f"{g_p50:>6.2f}ms {g_p50 - d_p50:>8.2f}ms {d_p99:>9.2f}ms {g_p99:>6.2f}ms {g_cpu:>9.0f}µs"
            )
            if litellm is not None and (cell := _measure_litellm(litellm, concurrency, requests)) is not None:
                litellm_rows.append((concurrency, (d_rps, d_p50, d_p99, math.nan), (g_rps, g_p50, g_p99, g_cpu), cell))
    finally:
        gateway.stop()
    if litellm_rows:
        _print_litellm(litellm_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"some of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the Python floor and LiteLLM (quick runs of the variants)"
    )
    args, _ = parser.parse_known_args()
    variants = [v.strip() for v in args.variants.split(",")]
    print(f"load generator: {f'wrk ({WRK})' if WRK else 'httpx in this process (wrk not found: apt-get install wrk)'}")
    with fake_upstream() as fake_url, litellm_proxy(fake_url, MODEL, skip=args.no_compare) as litellm:
        if not args.no_compare:
            python_floor(fake_url, args.requests)
        for variant in (v for v in variants if v in SQLITE_VARIANTS):
            sqlite = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
            run(sqlite, "SQLite", fake_url, args.requests, variant, litellm)
        try:
            for variant in variants:
                with postgres_database("cg_bench") as (url, _):
                    run(url, "Postgres", fake_url, args.requests, variant, litellm)
        except ServiceUnavailable as exc:
            print(f"\nPostgres: skipped ({exc})")


if __name__ == "__main__":
    main()
