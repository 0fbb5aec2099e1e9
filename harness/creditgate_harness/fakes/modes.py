"""One shape for every fake in every mode: ``Fake(state, url, env, mode)``.

- ``inprocess``: respx intercepts the vendor's real base URL (``https://api.openai.com/v1``…) and hands each
  request to the fake's ASGI app — no port, no configuration; sync and async httpx clients alike.
- ``asgi``: ``fake.transport`` is an ``httpx.ASGITransport`` on the fake (available in every mode).
- ``server``: the fake on a real loopback port (for subprocesses, live servers and load).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import httpx
import respx
from respx.mocks import HTTPCoreMocker, Mocker
from starlette.types import ASGIApp

from creditgate_harness.servers import ThreadedServer

S = TypeVar("S")
Mode = Literal["inprocess", "server"]
_PASS = "harness-pass-through"  # noqa: S105 - a route name


@dataclass
class Fake(Generic[S]):
    """A fake vendor: its scriptable ``state``, the ``url`` clients call and the ``env`` a client needs."""

    state: S
    app: ASGIApp = field(repr=False)
    url: str
    env: dict[str, str]
    mode: Mode

    @property
    def transport(self) -> httpx.ASGITransport:
        """The fake as an httpx transport (``httpx.AsyncClient(transport=fake.transport)``)."""
        return httpx.ASGITransport(app=self.app)


_resolving_async: contextvars.ContextVar[bool] = contextvars.ContextVar("harness_resolving_async", default=False)


class _Router(respx.MockRouter):
    """respx's router, telling side effects whether the client is async (its stream types don't say)."""

    async def aresolve(self, request: httpx.Request) -> Any:
        token = _resolving_async.set(True)
        try:
            return await super().aresolve(request)
        finally:
            _resolving_async.reset(token)


def _mockers() -> list[str]:
    """respx mockers to start: httpcore (httpx) and, where installed, httpcore2 (httpx2: today's openai/anthropic)."""
    if importlib.util.find_spec("httpcore2") is None:
        return ["httpcore"]
    if "httpcore2" not in Mocker.registry:

        class HTTPCore2Mocker(HTTPCoreMocker):  # the same patching, on httpcore2's classes
            name = "httpcore2"
            targets = [t.replace("httpcore.", "httpcore2.", 1) for t in HTTPCoreMocker.targets]

            @classmethod
            def from_sync_httpx_response(cls, httpx_response: httpx.Response, target: Any, **kwargs: Any) -> Any:
                import httpcore2

                return httpcore2.Response(
                    status=httpx_response.status_code,
                    headers=httpx_response.headers.raw,
                    content=httpx_response.stream,
                    extensions=httpx_response.extensions,
                )

    return ["httpcore", "httpcore2"]


class InProcess:
    """respx routers that send the mounted vendors' URLs to fake ASGI apps; everything else passes through."""

    def __init__(self) -> None:
        self.routers = [_Router(assert_all_called=False, assert_all_mocked=True, using=m) for m in _mockers()]
        self._bridge: _LoopThread | None = None
        self._started = False

    def mount(self, base_url: str, app: ASGIApp) -> None:
        """Route every request under ``base_url`` to ``app``."""
        url = httpx.URL(base_url)
        handler = _Handler(app, self._loop)
        for router in self.routers:
            router.routes.pop(_PASS, None)  # type: ignore[no-untyped-call]
            path = url.path.rstrip("/") or "/"
            router.route(scheme=url.scheme, host=url.host, path__startswith=path).mock(side_effect=handler)
            router.route(name=_PASS).pass_through()
        if not self._started:
            for router in self.routers:
                router.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            for router in self.routers:
                router.stop(quiet=True)
            self._started = False
        if self._bridge is not None:
            self._bridge.stop()

    def _loop(self) -> _LoopThread:
        if self._bridge is None:
            self._bridge = _LoopThread()
        return self._bridge


class _LoopThread:
    """An event loop in a thread, so a sync client's request can run an async ASGI app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _Handler:
    """respx side effect: answer from the ASGI app; the client's read timeout still applies."""

    def __init__(self, app: ASGIApp, bridge: Any) -> None:
        self.transport = httpx.ASGITransport(app=app)
        self._bridge = bridge

    def __call__(self, request: httpx.Request) -> Any:
        timeout = (request.extensions.get("timeout") or {}).get("read")
        if _resolving_async.get():
            return self._async(request, timeout)
        body = request.read()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        try:
            return self._bridge().run(self._buffered(copy), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("the fake did not answer in time", request=request) from None

    async def _async(self, request: httpx.Request, timeout: float | None) -> httpx.Response:
        try:
            return await asyncio.wait_for(self._buffered(request), timeout)
        except TimeoutError:
            raise httpx.ReadTimeout("the fake did not answer in time", request=request) from None

    async def _buffered(self, request: httpx.Request) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


def serve(
    state: S, app: ASGIApp, *, path: str = "", env: dict[str, str] | None = None
) -> tuple[Fake[S], ThreadedServer]:
    """``state``'s app on a free loopback port; ``url`` is ``http://127.0.0.1:N`` + ``path``."""
    server = ThreadedServer(app).start()
    url = f"{server.url}{path}"
    return Fake(state, app, url, {k: v.replace("{url}", url) for k, v in (env or {}).items()}, "server"), server
