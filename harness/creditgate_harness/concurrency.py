"""Fire N requests at once and get every outcome: ``shots = await fire(client, 8, "POST", "/ask", json=…)``.

The same call drives the in-process app (``async_client``) and a live one (an ``httpx.AsyncClient`` on
``live_server.url``). All N requests start together (an ``asyncio.Barrier``); each ``Shot`` has its status (0 when
no answer came: the exception is kept), its response and its elapsed time — and is an ``Outcome``, so the shots go
to ``check_money(outcomes=shots, …)`` as they are. ``shot.marker`` is the oracle's attribution marker: put it in the
prompt (``json=lambda shot: {"question": f"hi {shot.marker}"}``) and the upstream's record names the request.

Requests that finish before the others start do not overlap. ``hold=fake_openai.state`` makes them: the fake
upstream holds every answer (``FakeProvider.gate``) until each of the N requests is either waiting at it or done,
then answers them all — so N requests are inside the app at once, past whatever check they made before calling
the upstream. ``Gate`` is the thread-safe event it uses, which also works when the fake runs on a port (its own
thread and loop) for a live server.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from creditgate_harness.oracle import Outcome, marker

if TYPE_CHECKING:
    from creditgate_harness.fakes.providers import FakeProvider

__all__ = ["Gate", "Shot", "fire"]


class Gate(asyncio.Event):
    """An ``asyncio.Event`` that may be waited on from any event loop and thread and set from any other: what
    ``FakeProvider.gate`` needs when the fake serves on a port (its own loop) and the test sets it from its own."""

    def __init__(self) -> None:
        super().__init__()
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        """Whether the gate is open."""
        return self._flag.is_set()

    def set(self) -> None:
        """Open the gate: every waiter, on whatever loop and thread, goes on."""
        with self._lock:
            self._flag.set()
            waiting, self._waiting = self._waiting, []
        for loop, future in waiting:
            loop.call_soon_threadsafe(_resolve, future)

    def clear(self) -> None:
        """Close the gate again for the waits to come."""
        self._flag.clear()

    async def wait(self) -> bool:  # type: ignore[override]  # asyncio.Event.wait is Literal[True]
        """Wait until the gate is open (at once if it is)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._flag.is_set():
                return True
            future: asyncio.Future[None] = loop.create_future()
            self._waiting.append((loop, future))
        await future
        return True

    @property
    def waiting(self) -> int:
        """How many callers wait at the gate now."""
        with self._lock:
            return sum(not future.done() for _, future in self._waiting)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True)
class Shot(Outcome):
    """One fired request: ``status`` (0: no answer), ``response`` or ``exception``, ``elapsed`` seconds from the
    common start; ``index`` (0…N-1), ``rid`` and ``account`` say which it was. An ``Outcome`` for the oracle."""

    index: int = 0
    response: httpx.Response | None = field(default=None, repr=False)
    exception: BaseException | None = None
    elapsed: float = 0.0

    @property
    def marker(self) -> str:
        """The oracle's marker for this request (``[cg-load rid=… acct=…]``): put it in the prompt."""
        return marker(self.rid, self.account or "none")

    def json(self) -> Any:
        """The response's JSON body (``None`` when there was no answer)."""
        return None if self.response is None else self.response.json()


Per = Callable[[Shot], Any]


async def fire(
    client: httpx.AsyncClient,
    n: int,
    method: str,
    url: str | Per,
    *,
    json: Any = None,
    content: Any = None,
    headers: Mapping[str, str] | Per | None = None,
    account: str | int | None = None,
    stream: bool = False,
    hold: FakeProvider | None = None,
    timeout: float = 30.0,
) -> list[Shot]:
    """Send ``n`` requests at once through ``client`` and return their ``Shot``s, in order of ``index``.

    Args:
        client: ``async_client``, or an ``httpx.AsyncClient(base_url=live_server.url)``.
        n: how many requests (at least 1).
        method: the HTTP method.
        url: the path or URL, or ``shot -> url``.
        json: the JSON body, or ``shot -> body`` (each shot's ``index``, ``rid`` and ``marker`` are set).
        content: a raw body instead, or ``shot -> bytes``.
        headers: headers, or ``shot -> headers``.
        account: the account the requests spend (the shots' ``account``, for the oracle and the marker).
        stream: read each answer as a stream; a stream broken off midway gives ``complete=False``.
        hold: a ``FakeProvider`` (``fake_openai.state``): it holds its answers until every request waits at it
            or is done, so all ``n`` overlap inside the app. Its previous ``gate`` is put back afterwards.
        timeout: seconds to wait for the requests to reach the held upstream before answering them anyway.
    """
    if n < 1:
        raise ValueError(f"fire(n={n}): fire at least one request")
    shots = [
        Shot(
            rid=uuid.uuid4().hex[:16], account="" if account is None else str(account), status=0, stream=stream, index=i
        )
        for i in range(n)
    ]
    barrier = asyncio.Barrier(n)
    start = 0.0

    async def one(shot: Shot) -> Shot:
        nonlocal start
        request = client.build_request(
            method,
            url(shot) if callable(url) else url,
            json=json(shot) if callable(json) else json,
            content=content(shot) if callable(content) else content,
            headers=headers(shot) if callable(headers) else headers,
        )
        await barrier.wait()
        start = start or time.perf_counter()
        response: httpx.Response | None = None
        try:
            response = await client.send(request, stream=stream)
            if stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except Exception as exc:  # the shot's outcome: no answer, or a stream broken off
            status = response.status_code if response is not None else 0
            return replace(shot, status=status, complete=False, response=response, exception=exc, elapsed=_since(start))
        return replace(shot, status=response.status_code, response=response, elapsed=_since(start))

    if hold is None:
        return list(await asyncio.gather(*(one(s) for s in shots)))
    previous, gate = hold.gate, Gate()
    hold.gate = gate
    try:
        tasks = [asyncio.ensure_future(one(s)) for s in shots]
        deadline = time.monotonic() + timeout
        while not gate.is_set():
            if gate.waiting + sum(t.done() for t in tasks) >= n or time.monotonic() > deadline:
                gate.set()
            else:
                await asyncio.sleep(0.002)
        return list(await asyncio.gather(*tasks))
    finally:
        gate.set()
        hold.gate = previous


def _since(start: float) -> float:
    return time.perf_counter() - start
