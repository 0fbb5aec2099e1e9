"""Hostile input on every route, and absurd numbers from the upstream: a clear 4xx (or 502), never a 500, no credit
moved, no hold left open.

Every route that reads a body is taken from the OpenAPI schema, so a route added later is covered without editing
this file: a lone surrogate (issue 26, F4) is a 400/422 ``unencodable_text`` and a body over the limit a 413, both
before authentication, a quota call or a hold. Numbers sent as strings (``"100"``, Arabic-Indic digits) are refused.
An upstream reporting negative, fractional or ≥ 2³¹ token counts (F10) is a malformed answer.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import func, select

from creditgate.db.models import Hold, UsageRecord
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Reply

LIMIT = 64 * 1024


def _concrete(path: str) -> str:
    """``/orgs/{org_id}/members/{user_id}`` → ``/orgs/1/members/1``."""
    return "/".join("1" if part.startswith("{") else part for part in path.split("/"))


def _schema_routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, path, parsed) of every route the schema lists with a body; ``parsed``: FastAPI parses it (the raw
    body routes are the signed webhooks, whose own verification refuses it: ``test_signed_garbage.py``)."""
    parsed = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.body_field is not None
        for method in route.methods
    }
    routes = []
    for path, item in app.openapi()["paths"].items():
        for method, op in item.items():
            if isinstance(op, dict) and "requestBody" in op:
                routes.append((method.upper(), path, (method.upper(), path) in parsed))
    return sorted(routes)


@pytest.fixture
def cg_settings(cg_settings: Settings) -> Settings:
    return cg_settings.model_copy(update={"max_body_bytes": LIMIT})


async def _books(rt: Runtime) -> tuple[int, int]:
    async with rt.sessionmaker() as session:
        holds = await session.scalar(select(func.count()).select_from(Hold).where(Hold.status == "open"))
        usage = await session.scalar(select(func.count()).select_from(UsageRecord))
    return int(holds or 0), int(usage or 0)


async def test_every_body_route_refuses_a_lone_surrogate_and_an_oversized_body(
    async_client: httpx.AsyncClient, cg_app: FastAPI, cg_admin_user: TestUser, cg_funded_user: TestUser
) -> None:
    routes = _schema_routes(cg_app)
    assert len(routes) >= 15, routes  # the schema, not a hand list: a route added later is covered
    surrogate = b'{"model": "test-model", "name": "a\\ud800b", "email": "x\\udfff@example.test", "messages": []}'
    oversized = json.dumps({"name": "x" * (LIMIT + 1)}).encode()
    for user in (cg_admin_user, cg_funded_user):
        headers = user.headers | {"Content-Type": "application/json"}
        for method, path, parsed in routes:
            url = _concrete(path)
            answer = await async_client.request(method, url, content=surrogate, headers=headers)
            if parsed:
                assert answer.status_code in (400, 422), (method, path, answer.status_code, answer.text[:300])
                assert "unencodable_text" in answer.text, (method, path, answer.text[:300])
            else:  # a signed webhook: its verification refuses it (503: not configured in this test)
                assert 400 <= answer.status_code < 500 or answer.status_code == 503, (method, path, answer.text)
            answer = await async_client.request(method, url, content=oversized, headers=headers)
            assert answer.status_code == 413, (method, path, answer.status_code, answer.text[:300])
            assert "request_too_large" in answer.text, (method, path, answer.text[:300])


async def test_a_valid_surrogate_pair_is_not_refused(async_client: httpx.AsyncClient, cg_funded_user: TestUser) -> None:
    """An emoji sent by an ``ensure_ascii`` client is a surrogate *pair*: valid, answered."""
    body = b'{"model": "test-model", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}'
    headers = cg_funded_user.headers | {"Content-Type": "application/json"}
    answer = await async_client.post("/v1/chat/completions", content=body, headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("value", ["100", "١٠٠", 1.5, True, None, [100], {"n": 1}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_token_limit_that_is_no_integer_is_a_400(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, path: str, value: Any
) -> None:
    body = {"model": "test-model", "max_tokens": value, "messages": [{"role": "user", "content": "hi"}]}
    answer = await async_client.post(path, json=body, headers=cg_funded_user.headers)
    if value is None and path.endswith("completions"):  # OpenAI's max_tokens is optional: null means unset
        assert answer.status_code == 200
        return
    assert answer.status_code == 400, answer.text
    assert cg_upstream.calls == []


@pytest.mark.parametrize("tokens", [-5, 2**31, 2**40])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_absurd_upstream_usage_is_a_malformed_answer_and_closes_the_hold(
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
    cg_funded_user: TestUser,
    cg_upstream: FakeProvider,
    path: str,
    tokens: int,
) -> None:
    """F10: a whole answer fails over (nothing charged, 502 with no other provider); a stream that already
    delivered text is charged as a stream without usage. Either way the hold is closed, no 500."""
    body = {"model": "test-model", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    cg_upstream.push(Reply(prompt_tokens=tokens))
    whole = await async_client.post(path, json=body, headers=cg_funded_user.headers)
    assert whole.status_code == 502, whole.text
    assert "provider_unavailable" in whole.text
    assert await _books(cg_runtime) == (0, 1)  # no hold left open; the failed attempt is recorded

    cg_upstream.push(Reply(prompt_tokens=tokens))
    stream_body = body | {"stream": True}
    if path.endswith("completions"):
        stream_body["stream_options"] = {"include_usage": True}
    streamed = await async_client.post(path, json=stream_body, headers=cg_funded_user.headers)
    assert streamed.status_code == 200
    open_holds, records = await _books(cg_runtime)
    assert (open_holds, records) == (0, 2)
    async with cg_runtime.sessionmaker() as session:
        record = (await session.execute(select(UsageRecord).order_by(UsageRecord.id.desc()).limit(1))).scalar_one()
    assert record.prompt_tokens < 1000  # the estimate, never the absurd number
    assert 0 < record.credits < 100


@pytest.mark.parametrize(
    ("field", "value"),
    [("service_tier", "priority"), ("service_tier", "scale"), ("service_tier", ["x"]), ("service_tier", 5)],
)
async def test_a_service_tier_the_catalog_does_not_price_is_refused(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, field: str, value: Any
) -> None:
    """The probe: ``priority`` was held and charged at the default tier's price; the vendor charges more."""
    body = {"model": "test-model", field: value, "messages": [{"role": "user", "content": "hi"}]}
    answer = await async_client.post("/v1/chat/completions", json=body, headers=cg_funded_user.headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "unbounded_request"
    assert cg_upstream.calls == []


@pytest.mark.parametrize(("size", "credits"), [("1024x1024", "6.00"), ("1792x1024", "12.00"), ("1024x1792", "12.00")])
async def test_a_larger_image_is_held_and_charged_its_own_price(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, size: str, credits: str
) -> None:
    """The probe: every size was charged the 1024² price ($0.04); the vendor bills $0.08 for the large ones."""
    body = {"model": "dall-e-3", "prompt": "a cat", "size": size}
    answer = await async_client.post("/v1/images/generations", json=body, headers=cg_funded_user.headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Creditgate-Credits-Charged"] == credits


@pytest.mark.parametrize("n", ["2", "2.0", " 2", True, 2.0])
async def test_an_image_count_that_is_no_integer_is_a_400(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider, n: Any
) -> None:
    body = {"model": "dall-e-3", "prompt": "a cat", "n": n}
    answer = await async_client.post("/v1/images/generations", json=body, headers=cg_funded_user.headers)
    assert answer.status_code == 400, answer.text
    assert cg_upstream.calls == []
