"""On Postgres a request's hold and settle are one SQL function call each (ledger/fast.py): these tests fail if
a request quietly falls back to the ORM path, and pin what that path must still do (low-balance notices,
counters, telling a committed settle from a lost one)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from creditgate.db.models import Hold, utcnow
from creditgate.ledger import service as ledger
from creditgate.ledger.sweeper import sweep_once
from creditgate.runtime import Runtime
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Reply

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
ON_POSTGRES = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _counter(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.critical
@ON_POSTGRES
async def test_a_request_holds_and_settles_without_the_orm_ledger(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cg_runtime.fast_ledger is not None

    async def not_here(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the ORM ledger was used on the fast path")

    for name in ("place_hold", "settle_hold", "release_hold"):
        monkeypatch.setattr(ledger, name, not_here)
    held_before = _counter("creditgate_credits_held_total")
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))

    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)

    assert response.status_code == 200, response.text
    charged = Decimal(response.headers["X-Creditgate-Credits-Charged"])
    assert charged > 0
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()
    assert Decimal(balance["balance"]) == Decimal(1000) - charged
    assert _counter("creditgate_credits_held_total") - held_before > 0


@ON_POSTGRES
async def test_the_fast_path_notifies_a_low_balance_with_its_figures(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_runtime: Runtime, cg_upstream: FakeProvider
) -> None:
    cg_runtime.settings.notify_low_balance = Decimal("999.99")
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    listed = (await async_client.get("/user/notifications", headers=cg_funded_user.headers)).json()["data"]
    assert response.status_code == 200
    assert [(n["type"], n["data"]) for n in listed] == [("low_balance", {"balance": balance, "threshold": "999.99"})]


@ON_POSTGRES
async def test_a_charged_answer_is_sent_when_its_low_balance_notice_cannot_be_written(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import creditgate.llm.metering as metering

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the notice's insert was refused")  # not a lost connection: the settle is not retried

    monkeypatch.setattr(metering, "notify_account", refused)
    cg_runtime.settings.notify_low_balance = Decimal("999.99")
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text  # charged, so answered: a 5xx here would be a paid failure
    charged = Decimal(response.headers["X-Creditgate-Credits-Charged"])
    balance = (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"]
    assert (charged > 0, Decimal(balance)) == (True, Decimal(1000) - charged)


@ON_POSTGRES
async def test_a_retry_tells_a_committed_settle_from_a_lost_one(
    cg_funded_user: TestUser, cg_runtime: Runtime, async_client: httpx.AsyncClient
) -> None:
    from creditgate.auth.service import authenticate_cached
    from creditgate.llm.metering import Meter

    principal = await authenticate_cached(cg_runtime.caches, cg_runtime.sessionmaker, cg_funded_user.key)
    assert principal is not None
    model = cg_runtime.catalog.model("test-model")

    async def meter() -> Meter:
        return await Meter.open(cg_runtime, principal, model, prompt_estimate=10, max_tokens=100)

    open_, settled, expired, late = await meter(), await meter(), await meter(), await meter()
    async with cg_runtime.sessionmaker.begin() as s:
        await ledger.settle_hold(
            s,
            hold_id=settled.hold_id,  # type: ignore[arg-type]
            request_id=settled.request_id,
            charge=Decimal("0.05"),
        )
        await s.execute(
            update(Hold).where(Hold.id.in_([expired.hold_id, late.hold_id])).values(expires_at=utcnow() - timedelta(1))
        )
    assert await sweep_once(cg_runtime.sessionmaker) == 2
    async with cg_runtime.sessionmaker.begin() as s:
        await ledger.settle_hold(
            s,
            hold_id=late.hold_id,  # type: ignore[arg-type]
            request_id=late.request_id,
            charge=Decimal("0.01"),
        )

    assert await open_._committed_charge() is None  # nothing committed yet: settle it
    assert await settled._committed_charge() == Decimal("0.05")
    assert await expired._committed_charge() is None  # released by the sweeper, never charged: settle late
    assert await late._committed_charge() == Decimal("0.01")  # the smallest late charge counts
    assert cg_runtime.fast_ledger is not None
    not_open = {"status": "settled", "charge": 1, "description": None, "user_id": None, "usage": None}
    assert (
        await cg_runtime.fast_ledger.close(
            hold_id=expired.hold_id,  # type: ignore[arg-type]
            request_id=expired.request_id,
            **not_open,  # type: ignore[arg-type]
        )
        is None
    )
    for m in (open_, settled, expired, late):
        m.closed = True  # settled by hand above, or left to the sweeper


def test_what_counts_as_unreachable_through_sqlalchemys_wrapper() -> None:
    from creditgate.db.errors import unreachable

    class ConnectionDoesNotExistError(Exception):
        pass

    class DBAPIError(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__("wrapped")
            self.orig = orig

    assert unreachable(DBAPIError(ConnectionDoesNotExistError()))
    assert not unreachable(DBAPIError(ValueError("a refusal")))


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_a_failed_call_is_released_and_recorded_on_either_path(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    cg_sessionmaker: Any,
) -> None:
    from sqlalchemy import select

    from creditgate.db.models import LedgerEntry
    from creditgate_harness.fakes.providers import Fault

    cg_upstream.default = Fault.status_code(503)
    assert (await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)).status_code == 502
    usage = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"]
    assert [
        (u["credits"], u["outcome"], u["prompt_tokens"], u["completion_tokens"], u["latency_ms"], u["provider"])
        for u in usage
    ] == [("0.00", "failed", 0, 0, 0, None)]
    async with cg_sessionmaker() as s:
        entries = [
            (e.type, e.user_id)
            for e in await s.scalars(
                select(LedgerEntry).where(LedgerEntry.hold_id.is_not(None)).order_by(LedgerEntry.id)
            )
        ]
    assert entries == [("hold", cg_funded_user.id), ("release", cg_funded_user.id)]
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_an_answered_requests_entries_name_the_user_and_the_route(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_upstream: FakeProvider,
    cg_sessionmaker: Any,
) -> None:
    from sqlalchemy import select

    from creditgate.db.models import LedgerEntry

    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000, latency=0.02))
    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    provider = response.headers["X-Creditgate-Provider"]
    async with cg_sessionmaker() as s:
        entries = [
            (e.type, e.user_id, e.description)
            for e in await s.scalars(
                select(LedgerEntry).where(LedgerEntry.hold_id.is_not(None)).order_by(LedgerEntry.id)
            )
        ]
    assert entries == [
        ("hold", cg_funded_user.id, None),
        ("release", cg_funded_user.id, None),
        ("api_usage", cg_funded_user.id, f"test-model via {provider}"),
    ]
    usage = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"]
    assert [(u["outcome"], u["provider"], u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [
        ("ok", provider, 1000, 100)
    ]
    assert usage[0]["latency_ms"] >= 20  # the upstream took 20 ms
