"""An answered request is settled even when the database blinks: the settle is retried, never given up at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from creditgate.runtime import Runtime
from creditgate_harness.fakes.providers import FakeProvider, Reply
from creditgate_harness.gateway import TestUser

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


class ConnectionDoesNotExistError(Exception):
    """Named like asyncpg's: the connection died under the statement (Postgres restarting)."""


@pytest.mark.critical
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_settle_the_database_cannot_take_is_retried_until_it_can(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_runtime: Runtime,
    cg_upstream: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cg_runtime.fast_ledger is not None
    real_close, failures = cg_runtime.fast_ledger.close, [ConnectionDoesNotExistError("gone"), OSError("refused")]

    async def flaky_close(**kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await real_close(**kwargs)

    monkeypatch.setattr(cg_runtime.fast_ledger, "close", flaky_close)
    cg_upstream.push(Reply(prompt_tokens=1000, completion_tokens=1000))

    response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)

    assert response.status_code == 200
    assert failures == []
    charged = response.headers["X-Creditgate-Credits-Charged"]
    assert charged != "0.00"
    usage = (await async_client.get("/user/usage", headers=cg_funded_user.headers)).json()["data"]
    assert [u["credits"] for u in usage] == [charged]  # charged once, recorded once


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_statement_the_database_refuses_is_not_retried(
    cg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    assert cg_runtime.fast_ledger is not None
    calls = []

    async def broken_close(**kwargs: Any) -> Any:
        calls.append(kwargs)
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr(cg_runtime.fast_ledger, "close", broken_close)
    with pytest.raises(ValueError, match="a bug"):
        await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    assert len(calls) >= 1
    assert len([c for c in calls if c["status"] == "settled"]) == 1
