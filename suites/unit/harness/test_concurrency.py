"""creditgate_harness.concurrency: fire sends N requests at once, in-process and over a port, and hold= makes
them all overlap inside the app; Gate wakes waiters on other loops and threads; the shots feed the oracle."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from creditgate_harness import FakeProvider, Fault, Gate, Reply, Shot, ThreadedServer, check_money, fire
from creditgate_harness.oracle import AccountBooks


def app_over(upstream: Callable[[], httpx.AsyncClient], answered_after: list[int], provider: FakeProvider) -> Starlette:
    """An app that asks the upstream and notes how many calls the upstream had seen when its answer came."""

    async def ask(request: Request) -> Response:
        body = await request.json()
        async with upstream() as client:
            answer = await client.post(
                "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": body["q"]}]}
            )
        answered_after.append(len(provider.calls))
        return JSONResponse(answer.json(), status_code=answer.status_code)

    async def boom(request: Request) -> Response:
        raise RuntimeError("the app fell over")

    return Starlette(routes=[Route("/ask", ask, methods=["POST"]), Route("/boom", boom, methods=["POST"])])


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(default=Reply(content="hi", prompt_tokens=2, completion_tokens=3))


async def test_hold_answers_only_once_every_request_is_inside_the_app(provider: FakeProvider) -> None:
    seen: list[int] = []
    app = app_over(in_process(provider), seen, provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        shots = await fire(client, 6, "POST", "/ask", json=lambda s: {"q": f"q{s.index}"}, hold=provider)

    assert [s.status for s in shots] == [200] * 6
    assert seen == [6] * 6  # no answer before the 6th call reached the upstream
    assert provider.gate is None  # put back as it was
    assert [s.index for s in shots] == list(range(6))
    assert all(s.elapsed > 0 and s.exception is None and s.json()["object"] == "chat.completion" for s in shots)


async def test_without_hold_requests_need_not_overlap(provider: FakeProvider) -> None:
    """What hold= adds: in-process, a request can run to its end before the next one starts."""
    seen: list[int] = []
    app = app_over(in_process(provider), seen, provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        await fire(client, 6, "POST", "/ask", json={"q": "same"})
    assert min(seen) < 6


async def test_all_requests_are_ready_before_the_first_is_sent(provider: FakeProvider) -> None:
    """The barrier: no request reaches the app before every one of them is built and waiting to go."""
    seen: list[int] = []
    app = app_over(in_process(provider), seen, provider)
    arrived_before_built: list[int] = []

    def body(shot: Shot) -> dict[str, str]:
        arrived_before_built.append(len(provider.calls))
        return {"q": shot.marker}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        shots = await fire(client, 5, "POST", "/ask", json=body, account="a")
    assert arrived_before_built == [0] * 5
    assert [s.status for s in shots] == [200] * 5
    assert len({s.rid for s in shots}) == 5
    assert all(s.marker == f"[cg-load rid={s.rid} acct=a]" for s in shots)


async def test_hold_lets_requests_through_that_never_reach_the_upstream(provider: FakeProvider) -> None:
    seen: list[int] = []
    app = app_over(in_process(provider), seen, provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        paths = ["/ask", "/nope", "/ask"]
        shots = await asyncio.wait_for(
            fire(client, 3, "POST", lambda s: paths[s.index], json={"q": "x"}, hold=provider), 10
        )
    assert [s.status for s in shots] == [200, 404, 200]


async def test_no_answer_is_status_0_with_the_exception() -> None:
    app = app_over(httpx.AsyncClient, [], FakeProvider())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        shots = await fire(client, 2, "POST", "/boom", account=7)
    assert [(s.status, s.account, s.definite) for s in shots] == [(0, "7", False)] * 2
    assert all(isinstance(s.exception, RuntimeError) and s.json() is None for s in shots)


async def test_a_live_server_and_a_fake_on_its_own_thread(provider: FakeProvider) -> None:
    """Over real ports: the fake upstream serves on its own thread and loop, and hold= still holds it (Gate)."""
    upstream_server = ThreadedServer(provider.app).start()
    seen: list[int] = []
    app_server = ThreadedServer(
        app_over(lambda: httpx.AsyncClient(base_url=upstream_server.url), seen, provider)
    ).start()
    try:
        async with httpx.AsyncClient(base_url=app_server.url, timeout=10) as client:
            shots = await asyncio.wait_for(
                fire(client, 5, "POST", "/ask", json=lambda s: {"q": s.marker}, account="a1", hold=provider), 15
            )
    finally:
        app_server.stop()
        upstream_server.stop()
    assert [s.status for s in shots] == [200] * 5
    assert seen == [5] * 5
    served_after = min(s.at for s in provider.served)
    assert max(c.at for c in provider.calls) <= served_after  # every call arrived before the first answer left


async def test_shots_are_outcomes_for_the_oracle(provider: FakeProvider) -> None:
    provider.push(
        Reply(prompt_tokens=2, completion_tokens=3), Fault.status_code(503), Reply(prompt_tokens=2, completion_tokens=3)
    )
    seen: list[int] = []
    app = app_over(in_process(provider), seen, provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://app") as client:
        shots = await fire(client, 3, "POST", "/ask", json=lambda s: {"q": f"hello {s.marker}"}, account=1)

    assert sorted(s.status for s in shots) == [200, 200, 503]
    report = check_money(
        outcomes=shots,
        served=provider.served,  # the fake's own ServedCompletion records
        before={"1": AccountBooks("1", Decimal(20))},
        after={"1": AccountBooks("1", Decimal(10))},
        price=lambda s: Decimal(s.prompt_tokens + s.completion_tokens),
    )
    assert report.ok, str(report)


def test_the_gate_wakes_waiters_on_other_threads_and_loops() -> None:
    gate = Gate()
    woke: list[str] = []

    def waiter(name: str) -> None:
        async def main() -> None:
            await gate.wait()
            woke.append(name)

        asyncio.run(main())

    threads = [threading.Thread(target=waiter, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    deadline = 200
    while gate.waiting < 3 and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    assert gate.waiting == 3
    assert not gate.is_set()
    assert not woke
    gate.set()
    for t in threads:
        t.join(5)
    assert sorted(woke) == ["t0", "t1", "t2"]
    assert asyncio.run(gate.wait()) is True  # once set, a wait returns at once
    gate.clear()
    assert not gate.is_set()


async def test_streams_are_read_to_their_end(provider: FakeProvider) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(provider.app), base_url="http://up") as client:
        shots = await fire(client, 2, "POST", "/v1/chat/completions", json=body, stream=True)
    assert [(s.status, s.stream, s.complete) for s in shots] == [(200, True, True)] * 2
    assert all(s.response is not None and s.response.text.endswith("data: [DONE]\n\n") for s in shots)
    assert [c.complete for c in provider.served] == [True, True]


async def test_fire_needs_at_least_one_request() -> None:
    with pytest.raises(ValueError, match=r"fire\(n=0\): fire at least one request"):
        await fire(httpx.AsyncClient(), 0, "GET", "/")


def in_process(provider: FakeProvider) -> Callable[[], httpx.AsyncClient]:
    return lambda: httpx.AsyncClient(transport=httpx.ASGITransport(provider.app), base_url="http://upstream")
