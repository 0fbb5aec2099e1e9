"""llm/lean.py: the inference routes' straight-line handler answers every request as FastAPI's generic one does.

Each case is sent twice to the same app: once as served (``LeanApp`` calls ``LeanRoute``'s handler below Starlette's
middleware stack) and once through the whole stack and FastAPI's own handler (what OpenTelemetry on gets), and the
two answers must be the same status and body: bad JSON,
empty and non-object bodies, the wrong content type, bytes that are not UTF-8, a lone surrogate, wrong types,
a missing key, a key and a bad body together (authentication first, as FastAPI's dependency order has it).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import creditgate.llm.lean as lean
from creditgate.llm import relay
from creditgate.testing.gateway import TestUser

CHAT = {"model": "test-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "test-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
IMAGES = {"model": "test-image", "prompt": "a cat"}
JSON = {"Content-Type": "application/json"}
ROUTES = {
    "chat": ("/v1/chat/completions", CHAT),
    "messages": ("/v1/messages", MESSAGES),
    "count_tokens": ("/v1/messages/count_tokens", MESSAGES),
    "images": ("/v1/images/generations", IMAGES),
}


def _cases(valid: dict[str, Any]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Request bodies and headers (beside the API key) that each route must answer the same way."""
    return {
        "invalid JSON": (b'{"model": ', JSON),
        "empty body": (b"", JSON),
        "a list": (b"[]", JSON),
        "a string": (b'"hi"', JSON),
        "null": (b"null", JSON),
        "not UTF-8": (b'{"model": "\xff\xfe"}', JSON),
        "lone surrogate": (json.dumps({**valid, "model": "\ud800"}).encode(), JSON),
        "text/plain": (json.dumps(valid).encode(), {"Content-Type": "text/plain"}),
        "no content type": (json.dumps(valid).encode(), {}),
        "vendor +json": (json.dumps({**valid, "model": "nope"}).encode(), {"Content-Type": "application/vnd.x+json"}),
        "missing field": (json.dumps({k: v for k, v in valid.items() if k != "model"}).encode(), JSON),
        "string number": (json.dumps({**valid, "max_tokens": "5"}).encode(), JSON),
        "bool number": (json.dumps({**valid, "max_tokens": True}).encode(), JSON),
        "unknown model": (json.dumps({**valid, "model": "nope"}).encode(), JSON),
        "NaN": (json.dumps(valid).replace('"max_tokens": 5', '"max_tokens": NaN').encode(), JSON),
    }


async def _both(
    client: httpx.AsyncClient,
    app: lean.LeanApp,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    content: bytes,
    headers: dict[str, str],
) -> tuple[httpx.Response, httpx.Response]:
    answer = await client.post(path, content=content, headers=headers)
    with monkeypatch.context() as m:  # what the app does with OpenTelemetry on: the whole stack, FastAPI's handler
        m.setattr(lean, "get_telemetry_data", lambda: object())
        m.setattr(app, "_lean", None)
        generic = await client.post(path, content=content, headers=headers)
    return answer, generic


@pytest.mark.parametrize("route", ROUTES)
async def test_refusals_match_fastapis_handler(
    async_client: httpx.AsyncClient,
    cg_app: lean.LeanApp,
    cg_funded_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
) -> None:
    path, valid = ROUTES[route]
    for case, (content, headers) in _cases(valid).items():
        for key in (cg_funded_user.headers, {}, {"Authorization": "Bearer nope"}):
            answer, generic = await _both(async_client, cg_app, monkeypatch, path, content, {**headers, **key})
            assert answer.status_code == generic.status_code, (case, key, answer.text, generic.text)
            assert answer.headers["x-request-id"], (case, key)
            if answer.status_code >= 400:  # an answer carries fresh ids (a served image's URL)
                assert answer.json() == generic.json(), (case, key)


async def test_an_answer_matches_fastapis_handler(
    async_client: httpx.AsyncClient, cg_app: lean.LeanApp, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, headers = json.dumps(MESSAGES).encode(), {**JSON, **cg_funded_user.headers}
    answer, generic = await _both(async_client, cg_app, monkeypatch, "/v1/messages/count_tokens", body, headers)
    assert answer.status_code == generic.status_code == 200
    assert answer.json() == generic.json()
    assert answer.headers["X-Creditgate-Token-Count"] == generic.headers["X-Creditgate-Token-Count"]


async def test_a_failure_of_the_gateway_itself_matches_the_stacks_answer(
    async_client: httpx.AsyncClient, cg_app: lean.LeanApp, cg_funded_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception: the same 500 body from both, and the exception still reaches the server's log.
    (``async_client`` runs the app's lifespan; the clients here share its state.)"""

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(relay, "complete", broken)
    transport = httpx.ASGITransport(cg_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        body, headers = json.dumps(CHAT).encode(), {**JSON, **cg_funded_user.headers}
        answer, generic = await _both(client, cg_app, monkeypatch, "/v1/chat/completions", body, headers)
    assert answer.status_code == generic.status_code == 500
    assert answer.json() == generic.json()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(cg_app), base_url="http://gateway") as client:
        with pytest.raises(RuntimeError, match="a bug"):  # raised again, as Starlette's server-error layer does
            await client.post("/v1/chat/completions", json=CHAT, headers=cg_funded_user.headers)


def test_only_the_inference_posts_skip_the_stack(cg_app: lean.LeanApp) -> None:
    assert cg_app._lean is not None
    assert set(cg_app._lean) == {"/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens",
                                 "/v1/images/generations"}  # fmt: skip


def test_no_middleware_is_skipped_by_the_inference_routes(cg_settings: Any) -> None:
    """A middleware the lean routes would skip is refused, added before serve_lean or after it."""
    from starlette.middleware.cors import CORSMiddleware

    from creditgate.main import create_app

    app = create_app(cg_settings)
    with pytest.raises(TypeError, match="add middleware before serve_lean"):
        app.add_middleware(CORSMiddleware, allow_origins=["*"])
    app._lean = None
    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    with pytest.raises(TypeError, match="would skip CORSMiddleware"):
        app.serve_lean([], metrics_enabled=False)


def test_an_endpoint_of_another_shape_is_refused_at_startup() -> None:
    from fastapi import APIRouter

    router = APIRouter(route_class=lean.LeanRoute)

    async def odd(payload: dict[str, int]) -> None: ...

    with pytest.raises(TypeError, match=r"takes \(body, principal, rt\)"):
        router.post("/odd")(odd)
