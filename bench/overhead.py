"""Gateway overhead: the fake upstream called directly and through the gateway (1 worker, metering + ledger on).

Prints RPS and p50/p99 latency at concurrency 1 and 32 for both, the RPS ratio and the added latency,
on SQLite and (when available) Postgres. Beside them, the LiteLLM proxy (1 worker, no database) routed to the same
fake upstream, measured in the same run so the ratios compare one machine state: its RPS against the upstream's, its
added latency, and the gateway's RPS as a multiple of LiteLLM's (bench/litellm_proxy.py installs it into its own
venv; when it cannot, one line says so and the rest runs). Run on demand: `nox -s bench` or `python -m bench.overhead`.
Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import httpx

from bench.common import fake_upstream, postgres_database
from bench.litellm_proxy import HEADERS as LITELLM_HEADERS
from bench.litellm_proxy import litellm_proxy
from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.quotas.service import load_plans, set_plan
from creditgate_harness.catalog import catalog_for_tests
from creditgate_harness.gateway import migrate, start_gateway
from creditgate_harness.servers import LiveServer
from creditgate_harness.services import ServiceUnavailable
from creditgate_harness.services.base import run_sync

MODEL = "test-model"
BODY = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "bench"}]}


async def _key(url: str) -> str:
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as s, s.begin():
        user, _ = await auth.create_user(s, email=f"bench-{uuid.uuid4().hex[:6]}@example.test", credits=Decimal(10**9))
        await set_plan(s, subject=f"user:{user.id}", plan="enterprise", plans=load_plans())
        key = await auth.issue_key(s, user_id=user.id)
    await engine.dispose()
    return key


async def measure(url: str, headers: dict[str, str], *, concurrency: int, requests: int) -> tuple[float, float, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        for _ in range(min(20, requests)):  # warm up
            await client.post(url, json=BODY)
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                response = await client.post(url, json=BODY)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return requests / elapsed, statistics.median(latencies) * 1000, p99 * 1000


# The ORM path with nothing cached (the code before the hot-path work) beside the default, in the same run.
VARIANTS = {"default": {}, "orm, no caches": {"CREDITGATE_FAST_LEDGER": "false", "CREDITGATE_CACHE_SECONDS": "0"}}


Cell = tuple[float, float, float]  # rps, p50 ms, p99 ms


def _measure_litellm(litellm: LiveServer, concurrency: int, requests: int) -> Cell | None:
    """LiteLLM's cell, or ``None`` after one line saying why: the comparison failing mid-run must not end the bench."""
    try:
        return asyncio.run(
            measure(f"{litellm.url}/v1/chat/completions", LITELLM_HEADERS, concurrency=concurrency, requests=requests)
        )
    except (AssertionError, httpx.HTTPError) as exc:
        print(f"LiteLLM: skipped at concurrency {concurrency} ({type(exc).__name__}: {str(exc)[:200]})")
        return None


def _print_litellm(rows: list[tuple[int, Cell, Cell, Cell]]) -> None:
    """LiteLLM's rows under the table: its RPS as a share of the upstream's, its added p50, and the gateway's RPS as
    a multiple of LiteLLM's (the comparison the issue asks for)."""
    print(
        f"{'concurrency':>11} {'litellm rps':>12} {'ratio':>6} {'litellm p50':>12} {'added p50':>10} "
        f"{'litellm p99':>12} {'gw/litellm rps':>15}"
    )
    for concurrency, (d_rps, d_p50, _), (g_rps, _, _), (l_rps, l_p50, l_p99) in rows:
        print(
            f"{concurrency:>11} {l_rps:>12.0f} {l_rps / d_rps:>6.0%} {l_p50:>10.2f}ms {l_p50 - d_p50:>8.2f}ms "
            f"{l_p99:>10.2f}ms {g_rps / l_rps:>14.2f}×"
        )


def run(
    database_url: str,
    label: str,
    fake_url: str,
    requests: int,
    variant: str = "default",
    litellm: LiveServer | None = None,
) -> None:
    migrate(database_url)
    key = run_sync(_key(database_url))
    root = Path(tempfile.mkdtemp())
    (root / "catalog.json").write_text(catalog_for_tests(f"{fake_url}/v1").model_dump_json())
    env = {"CREDITGATE_DATABASE_URL": database_url, "CREDITGATE_CATALOG": str(root / "catalog.json")}
    gateway = start_gateway(env=env | VARIANTS[variant], log_path=root / "gateway.log")
    litellm_rows: list[tuple[int, Cell, Cell, Cell]] = []
    try:
        print(f"\n{label} ({variant}): {requests} requests per cell")
        print(
            f"{'concurrency':>11} {'direct rps':>11} {'gateway rps':>12} {'ratio':>6} {'direct p50':>11} "
            f"{'gw p50':>8} {'added p50':>10} {'direct p99':>11} {'gw p99':>8}"
        )
        for concurrency in (1, 32):
            d_rps, d_p50, d_p99 = asyncio.run(
                measure(f"{fake_url}/v1/chat/completions", {}, concurrency=concurrency, requests=requests)
            )
            g_rps, g_p50, g_p99 = asyncio.run(
                measure(
                    f"{gateway.url}/v1/chat/completions",
                    {"Authorization": f"Bearer {key}"},
                    concurrency=concurrency,
                    requests=requests,
                )
            )
            print(
                f"{concurrency:>11} {d_rps:>11.0f} {g_rps:>12.0f} {g_rps / d_rps:>6.0%} {d_p50:>9.2f}ms "
                f"{g_p50:>6.2f}ms {g_p50 - d_p50:>8.2f}ms {d_p99:>9.2f}ms {g_p99:>6.2f}ms"
            )
            if litellm is not None and (cell := _measure_litellm(litellm, concurrency, requests)) is not None:
                litellm_rows.append((concurrency, (d_rps, d_p50, d_p99), (g_rps, g_p50, g_p99), cell))
    finally:
        gateway.stop()
    if litellm_rows:
        _print_litellm(litellm_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    args, _ = parser.parse_known_args()
    with fake_upstream() as fake_url, litellm_proxy(fake_url, MODEL) as litellm:
        for variant in VARIANTS:
            sqlite = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
            run(sqlite, "SQLite", fake_url, args.requests, variant, litellm)
        try:
            for variant in VARIANTS:
                with postgres_database("cg_bench") as (url, _):
                    run(url, "Postgres", fake_url, args.requests, variant, litellm)
        except ServiceUnavailable as exc:
            print(f"\nPostgres: skipped ({exc})")


if __name__ == "__main__":
    main()
