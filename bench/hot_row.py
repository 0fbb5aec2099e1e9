"""Hot-row deductions on Postgres: N concurrent clients hold+settle on ONE account; deductions/s and lost updates.

Three ways side by side in one run, each on a fresh account:
- ``orm``: ``ledger.service`` through SQLAlchemy, one transaction per hold and per settle (the SQLite/slow path);
- ``one-per-call``: ``creditgate_hold`` / ``creditgate_close``, one function call and one transaction per step;
- ``group commit``: ``creditgate_hold_batch`` / ``creditgate_close_batch`` (what the gateway runs): the holds and
  settles waiting at the same moment share one call, one transaction, and one write of the account row.

Run on demand: `nox -s bench` or `python -m bench.hot_row --clients 1024 --seconds 10`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal

from bench.common import postgres_database
from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.ledger import service as ledger
from creditgate.ledger.fast import PostgresLedger
from creditgate.testing.auditor import audit_url
from creditgate.testing.gateway import migrate

START = Decimal(10**9)
CHARGE = Decimal("0.37")
POOL = 16  # connections, whatever the number of clients


async def hammer(url: str, way: str, *, clients: int, seconds: float) -> tuple[int, float, Decimal, str]:
    engine = create_engine(url, pool_size=POOL)
    sm = create_sessionmaker(engine)
    async with sm() as s, s.begin():
        _, account = await auth.create_user(s, email=f"hot-{uuid.uuid4().hex[:8]}@example.test", credits=START)
    fast = (
        await PostgresLedger.connect(url, size=POOL, batch=way == "group commit", async_hold=True)
        if way != "orm"
        else None
    )

    async def orm_deduction(tag: str) -> None:
        async with sm() as s, s.begin():
            hold_id = await ledger.place_hold(
                s, account_id=account.id, amount=Decimal("1.00"), request_id=tag, ttl=timedelta(minutes=5)
            )
        async with sm() as s, s.begin():
            await ledger.settle_hold(s, hold_id=hold_id, request_id=tag, charge=CHARGE)

    async def fast_deduction(tag: str) -> None:
        assert fast is not None
        held = await fast.hold(
            account_id=account.id, units=100, request_id=tag, ttl_seconds=300, membership_id=None, user_id=None
        )
        assert held is not None
        closed = await fast.close(
            hold_id=held[0], request_id=tag, status="settled", charge=37, description=None, user_id=None, usage=None
        )
        assert closed is not None

    deduct: Callable[[str], Awaitable[None]] = orm_deduction if fast is None else fast_deduction
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def client(n: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            await deduct(f"{n}-{i}-{uuid.uuid4().hex[:6]}")
            done += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    batching = ""
    if fast is not None:
        calls = fast.holds.batches + fast.closes.batches
        batching = f"{(fast.holds.requests + fast.closes.requests) / max(calls, 1):.1f} steps per call"
        await fast.close_pool()
    async with sm() as s:
        final = await ledger.balance_of(s, account.id)
    await engine.dispose()
    lost = "none" if final == START - CHARGE * done else f"YES: {final} != {START - CHARGE * done}"
    return done, elapsed, final, f"lost updates: {lost}; {batching}".rstrip("; ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1024, help="concurrent clients on the one account")
    parser.add_argument("--seconds", type=float, default=10, help="per way")
    parser.add_argument("--ways", default="orm,one-per-call,group commit")
    args, _ = parser.parse_known_args()
    ways = [w.strip() for w in args.ways.split(",")]
    with postgres_database("cg_hot") as (url, server):
        migrate(url)
        print(
            f"\nhot row on {server}: {args.clients} clients, one account, {POOL} connections, {args.seconds:.0f} s each"
        )
        rates: dict[str, float] = {}
        for way in ways:
            done, elapsed, _, verdict = asyncio.run(hammer(url, way, clients=args.clients, seconds=args.seconds))
            rates[way] = done / elapsed
            print(f"  {way:>13}: {done:>7} deductions (hold + settle), {rates[way]:>8,.0f}/s; {verdict}")
        if "orm" in rates and len(rates) > 1:
            print(
                "  ratio to orm: " + ", ".join(f"{w} {r / rates['orm']:.1f}x" for w, r in rates.items() if w != "orm")
            )
        print(audit_url(url))


if __name__ == "__main__":
    main()
