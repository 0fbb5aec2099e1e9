"""llm/relay.py ``_Lease``: a stream renews its hold while it runs, and stops when it should (issue 26, F3)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from creditgate.llm.relay import _Lease

TTL = 0.06  # renewals every 20 ms


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Poll (a loaded CI machine delays timers; never a fixed sleep for a lower bound)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


class FakeMeter:
    def __init__(self, *, answers: list[Any] | None = None, hold_id: int | None = 1) -> None:
        self.rt = SimpleNamespace(settings=SimpleNamespace(hold_ttl_seconds=TTL))
        self.hold_id = hold_id
        self.answers = answers or []
        self.renewals = 0

    async def renew(self) -> bool:
        self.renewals += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


async def test_a_running_stream_renews_until_it_ends() -> None:
    meter = FakeMeter()
    lease = _Lease(meter)  # type: ignore[arg-type]
    lease.opened()
    lease.relaying()
    await until(lambda: meter.renewals >= 3)
    lease.end()
    renewed = meter.renewals
    await asyncio.sleep(TTL)
    assert meter.renewals == renewed  # ended: no more


async def test_the_upstream_phase_renews_too() -> None:
    """Before the first byte (a model thinking) the hold is renewed as well."""
    meter = FakeMeter()
    lease = _Lease(meter)  # type: ignore[arg-type]
    await until(lambda: meter.renewals >= 2)
    lease.end()


async def test_a_stream_nobody_reads_stops_renewing_after_one_period() -> None:
    meter = FakeMeter()
    lease = _Lease(meter)  # type: ignore[arg-type]
    lease.opened()  # the upstream answered, the client never started reading
    assert lease.task is not None
    await until(lease.task.done)
    assert meter.renewals <= 1
    assert lease.task is not None
    assert lease.task.done()


async def test_a_hold_no_longer_open_stops_the_renewals() -> None:
    meter = FakeMeter(answers=[False])
    lease = _Lease(meter)  # type: ignore[arg-type]
    lease.relaying()
    assert lease.task is not None
    await until(lease.task.done)
    assert meter.renewals == 1
    assert lease.task is not None
    assert lease.task.done()


async def test_a_failed_renewal_is_logged_and_retried(caplog: Any) -> None:
    meter = FakeMeter(answers=[ConnectionError("database away"), True])
    lease = _Lease(meter)  # type: ignore[arg-type]
    lease.relaying()
    await until(lambda: meter.renewals >= 2)
    lease.end()
    assert "renewing hold 1 failed" in caplog.text


async def test_nothing_held_nothing_renewed() -> None:
    meter = FakeMeter(hold_id=None)  # BYOK: no hold
    lease = _Lease(meter)  # type: ignore[arg-type]
    assert lease.task is None
    lease.end()
