"""No overdraft under concurrency: 50 simultaneous 100-credit holds on 1,000 credits → exactly 10 win."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.errors import InsufficientCredits
from creditgate.ledger import service as ledger
from creditgate.testing.gateway import TestUser

pytestmark = [pytest.mark.critical, pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)]


async def test_fifty_concurrent_holds_on_one_balance(
    cg_sessionmaker: async_sessionmaker[AsyncSession], cg_funded_user: TestUser, cg_ledger_auditor
) -> None:
    async def attempt(i: int) -> tuple[int, str] | None:
        try:
            async with cg_sessionmaker() as s, s.begin():
                hold_id = await ledger.place_hold(
                    s,
                    account_id=cg_funded_user.account_id,
                    amount=Decimal(100),
                    request_id=f"req-{i}",
                    ttl=timedelta(minutes=5),
                )
                return hold_id, f"req-{i}"
        except InsufficientCredits:
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    held = [h for h in results if h is not None]
    assert len(held) == 10
    async with cg_sessionmaker() as s:
        assert await ledger.balance_of(s, cg_funded_user.account_id) == Decimal("0.00")

    async def settle(hold_id: int, request_id: str) -> None:
        async with cg_sessionmaker() as s, s.begin():
            await ledger.settle_hold(s, hold_id=hold_id, request_id=request_id, charge=Decimal("73.30"))

    await asyncio.gather(*(settle(*h) for h in held))
    async with cg_sessionmaker() as s:
        final = await ledger.balance_of(s, cg_funded_user.account_id)
    assert final == Decimal("267.00")
    report = cg_ledger_auditor()
    assert report.ok, str(report)
    print(f"\n50 concurrent holds of 100: {len(held)} succeeded, final balance {final}, {report}")
