"""Hot-row deductions on Postgres: N concurrent clients hold+settle on ONE account; deductions/s and lost updates.

Run on demand: `nox -s bench` or `python -m bench.hot_row --clients 16 --seconds 10`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import timedelta
from decimal import Decimal

from bench.common import postgres_database
from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.ledger import service as ledger
from creditgate_harness.auditor import audit_url
from creditgate_harness.gateway import migrate


async def hammer(url: str, *, clients: int, seconds: float) -> tuple[int, Decimal, Decimal]:
    engine = create_engine(url, pool_size=clients)
    sm = create_sessionmaker(engine)
    start_balance = Decimal(10**9)
    async with sm() as s, s.begin():
        _, account = await auth.create_user(s, email="hot@example.test", credits=start_balance)
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            async with sm() as s, s.begin():
                hold_id = await ledger.place_hold(
                    s,
                    account_id=account.id,
                    amount=Decimal("1.00"),
                    request_id=f"{n}-{i}-{uuid.uuid4().hex[:6]}",
                    ttl=timedelta(minutes=5),
                )
            async with sm() as s, s.begin():
                await ledger.settle_hold(s, hold_id=hold_id, charge=Decimal("0.37"))
            done += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    async with sm() as s:
        final = await ledger.balance_of(s, account.id)
    await engine.dispose()
    return done, start_balance - Decimal("0.37") * done, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    args, _ = parser.parse_known_args()
    with postgres_database("cg_hot") as (url, server):
        migrate(url)
        started = time.perf_counter()
        done, expected, final = asyncio.run(hammer(url, clients=args.clients, seconds=args.seconds))
        elapsed = time.perf_counter() - started
        print(f"\nhot row on {server}: {args.clients} clients, {elapsed:.1f} s")
        print(f"deductions (hold + settle, 2 transactions each): {done}, {done / elapsed:.0f}/s")
        print(f"final balance {final}, expected {expected}, lost updates: {0 if final == expected else 'YES'}")
        print(audit_url(url))


if __name__ == "__main__":
    main()
