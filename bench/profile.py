"""Where a chat request's time goes: per-stage wall time in-process, and what one statement costs.

Runs the gateway in-process (ASGI) against the fake provider on a real port, wraps the stages of a
non-streaming chat request (auth, Meter.open = BYOK keys + quota + hold, the upstream call, settle) and
prints their mean per request; then times one statement through asyncpg directly and through an
AsyncSession, which is where the time goes on the machines we measured. Run on demand:
``python -m bench.profile [--requests 200]`` (Postgres from HARNESS_POSTGRES_URL or started locally).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import functools
import pstats
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import text

import creditgate.auth.deps as deps
import creditgate.ledger.fast as fast
import creditgate.ledger.service as ledger
import creditgate.llm.metering as metering
import creditgate.providers.pool as pool
from bench.common import fake_upstream, postgres_database
from bench.overhead import BODY, _keys
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.main import create_app
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.services import ServiceUnavailable

STAGES: dict[str, float] = collections.defaultdict(float)


def _timed(label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            STAGES[label] += time.perf_counter() - started

    return wrapper


ORDER = (
    "auth (API key → principal)",
    "Meter.open (keys, quota, hold)",
    "  of which the hold (Postgres: one call)",
    "  of which place_hold (ORM path)",
    "upstream call (pool.complete)",
    "Meter.settle (settle + usage)",
    "  of which the close (Postgres: one call)",
    "  of which settle_hold (ORM path)",
)


def instrument() -> None:
    for label in ORDER:
        STAGES[label] = 0.0
    deps.authenticate_cached = _timed("auth (API key → principal)", deps.authenticate_cached)
    open_ = metering.Meter.open.__func__  # type: ignore[attr-defined]
    metering.Meter.open = classmethod(_timed("Meter.open (keys, quota, hold)", open_))  # type: ignore[assignment]
    metering.Meter.settle = _timed("Meter.settle (settle + usage)", metering.Meter.settle)  # type: ignore[method-assign]
    ledger.place_hold = _timed("  of which place_hold (ORM path)", ledger.place_hold)
    ledger.settle_hold = _timed("  of which settle_hold (ORM path)", ledger.settle_hold)
    fast.PostgresLedger.hold = _timed("  of which the hold (Postgres: one call)", fast.PostgresLedger.hold)  # type: ignore[method-assign]
    fast.PostgresLedger.close = _timed("  of which the close (Postgres: one call)", fast.PostgresLedger.close)  # type: ignore[method-assign]
    complete = pool.ProviderPool.complete
    pool.ProviderPool.complete = _timed("upstream call (pool.complete)", complete)  # type: ignore[method-assign]


async def stages(url: str, fake_url: str, requests: int, *, cprofile: int = 0) -> None:
    key = (await _keys(url, shared_org=False))[0]
    app = create_app(Settings(_env_file=None, database_url=url), catalog=catalog_for_tests(f"{fake_url}/v1"))  # type: ignore[call-arg]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as client:
            for _ in range(20):
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
            for label in list(STAGES):
                STAGES[label] = 0.0
            profiler = cProfile.Profile() if cprofile else None
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            for _ in range(requests):
                await client.post("/v1/chat/completions", json=BODY)
            if profiler is not None:
                profiler.disable()
            elapsed = time.perf_counter() - started
    print(f"  {requests / elapsed:.0f} requests/s, {elapsed / requests * 1000:.2f} ms per request (client included)")
    for label, seconds in STAGES.items():
        print(f"  {label:<42} {seconds / requests * 1000:6.2f} ms")
    if profiler is not None:  # CPU by function, this process (client, gateway; not the upstream or the database)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(cprofile)


async def statement_cost(pg_url: str, sa_url: str, n: int = 1000) -> None:
    async def per_call(fn: Callable[[], Awaitable[Any]]) -> float:
        for _ in range(50):
            await fn()
        started = time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.perf_counter() - started) / n * 1000

    conn = await asyncpg.connect(pg_url)
    engine = create_engine(sa_url)
    sessions = create_sessionmaker(engine)

    async def in_session() -> None:
        async with sessions() as session:
            await session.scalar(text("SELECT 1"))

    async def in_open_session() -> None:
        await session.scalar(text("SELECT 1"))

    print(f"  asyncpg SELECT 1:                        {await per_call(lambda: conn.fetchval('SELECT 1')):.3f} ms")
    print(f"  AsyncSession checkout + SELECT 1:        {await per_call(in_session):.3f} ms")
    async with sessions() as session:
        print(f"  SELECT 1 in an open AsyncSession:        {await per_call(in_open_session):.3f} ms")
    await conn.close()
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print the N costliest functions")
    args, _ = parser.parse_known_args()
    instrument()
    with fake_upstream() as fake_url:
        sqlite = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/profile.db"
        migrate(sqlite)
        print(f"SQLite, {args.requests} sequential requests:")
        asyncio.run(stages(sqlite, fake_url, args.requests, cprofile=args.cprofile))
        try:
            with postgres_database("cg_profile") as (url, _):
                migrate(url)
                print(f"Postgres, {args.requests} sequential requests:")
                asyncio.run(stages(url, fake_url, args.requests, cprofile=args.cprofile))
                print("One statement on Postgres:")
                asyncio.run(statement_cost(url.replace("postgresql+asyncpg://", "postgresql://"), url))
        except ServiceUnavailable as exc:
            print(f"Postgres: skipped ({exc})")


if __name__ == "__main__":
    main()
