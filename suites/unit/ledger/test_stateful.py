"""A Hypothesis state machine over top-ups, holds, settles, releases, expiry sweeps and debits.

The model tracks what the balance must be; the ledger auditor is the invariant after every step.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule
from sqlalchemy import update

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.db.models import Hold, utcnow
from creditgate.errors import InsufficientCredits
from creditgate.ledger import service as ledger
from creditgate.ledger.sweeper import sweep_once
from creditgate.testing.auditor import audit
from creditgate.testing.gateway import migrate
from creditgate.testing.strategies import credit_amounts

pytestmark = pytest.mark.critical


@functools.cache
def _template() -> Path:
    path = Path(tempfile.mkdtemp()) / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        path = Path(self.dir.name) / "ledger.db"
        shutil.copyfile(_template(), path)
        url = f"sqlite+aiosqlite:///{path}"
        self.engine = create_engine(url)
        self.sm = create_sessionmaker(engine=self.engine)
        self.expected = Decimal(0)
        self.open: dict[int, Decimal] = {}
        self.request_of: dict[int, str] = {}
        self.counter = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @initialize()
    def make_account(self) -> None:
        async def go() -> int:
            async with self.sm() as s, s.begin():
                _, account = await auth.create_user(s, email="m@example.test")
                return account.id

        self.account_id = self.run(go())

    @rule(amount=credit_amounts(max_value="500"))
    def top_up(self, amount: Decimal) -> None:
        async def go() -> None:
            async with self.sm() as s, s.begin():
                await ledger.post_entry(s, account_id=self.account_id, amount=amount, type="purchase")

        self.run(go())
        self.expected += amount

    @rule(target=holds, amount=credit_amounts(min_value="0", max_value="300"))
    def hold(self, amount: Decimal) -> int:
        self.counter += 1

        async def go() -> int | None:
            try:
                async with self.sm() as s, s.begin():
                    hold_id = await ledger.place_hold(
                        s,
                        account_id=self.account_id,
                        amount=amount,
                        request_id=f"r{self.counter}",
                        ttl=timedelta(minutes=5),
                    )
                    return hold_id
            except InsufficientCredits:
                return None

        hold_id = self.run(go())
        if amount > self.expected:
            assert hold_id is None
            return -1
        assert hold_id is not None
        self.request_of[hold_id] = f"r{self.counter}"
        self.expected -= amount
        self.open[hold_id] = amount
        return hold_id

    @rule(hold_id=consumes(holds), charge=credit_amounts(min_value="0", max_value="400"))
    def settle(self, hold_id: int, charge: Decimal) -> None:
        if hold_id not in self.open:
            return

        async def go() -> None:
            async with self.sm() as s, s.begin():
                await ledger.settle_hold(s, hold_id=hold_id, request_id=self.request_of[hold_id], charge=charge)

        self.run(go())
        held = self.open.pop(hold_id)
        self.expected += held - min(charge, held + self.expected)  # beyond the hold: what the balance has

    @rule(hold_id=consumes(holds))
    def release(self, hold_id: int) -> None:
        if hold_id not in self.open:
            return

        async def go() -> bool:
            async with self.sm() as s, s.begin():
                return await ledger.release_hold(s, hold_id=hold_id, request_id=self.request_of[hold_id])

        assert self.run(go())
        self.expected += self.open.pop(hold_id)

    @rule(hold_id=holds)
    def expire(self, hold_id: int) -> None:
        if hold_id not in self.open:
            return

        async def go() -> int:
            async with self.sm() as s, s.begin():
                await s.execute(update(Hold).where(Hold.id == hold_id).values(expires_at=utcnow() - timedelta(1)))
            return await sweep_once(self.sm)

        assert self.run(go()) == 1
        self.expected += self.open.pop(hold_id)

    @rule(amount=credit_amounts(max_value="200"))
    def debit(self, amount: Decimal) -> None:
        async def go() -> bool:
            try:
                async with self.sm() as s, s.begin():
                    await ledger.post_entry(s, account_id=self.account_id, amount=-amount, type="adjustment")
                    return True
            except InsufficientCredits:
                return False

        applied = self.run(go())
        assert applied == (amount <= self.expected)
        if applied:
            self.expected -= amount

    @invariant()
    def balance_matches_model_and_ledger(self) -> None:
        if not hasattr(self, "account_id"):
            return

        async def go() -> tuple[Decimal, object]:
            async with self.sm() as s:
                balance = await ledger.balance_of(s, self.account_id)
            return balance, await audit(self.engine)

        balance, report = self.run(go())
        assert balance == self.expected
        assert report.ok, str(report)  # type: ignore[attr-defined]

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()
        self.dir.cleanup()


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_ledger_state_machine = LedgerMachine.TestCase
