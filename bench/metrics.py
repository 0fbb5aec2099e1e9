"""What metrics and request logging cost on the hot path: the same chat request with and without them.

Two gateways in one process on one SQLite database, one with ``metrics_enabled`` (middleware counters and
histograms, the timing transport, the breaker listener) and one without; both write the request log line
(at INFO, to a null handler). Requests alternate between them one by one so the machine's noise falls on
both alike. Then the middleware alone around an empty ASGI app, where nothing else
hides its cost. Run on demand: ``python -m bench.metrics [--requests 300 --rounds 6]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from starlette.types import Receive, Scope, Send

from bench.overhead import BODY, _keys
from creditgate.main import create_app
from creditgate.observability.logs import REQUEST_LOGGER
from creditgate.observability.middleware import ObservabilityMiddleware
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.fakes.providers import FakeProvider


async def _one(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one request; CPU time ignores the machine's other load."""
    started, cpu = time.perf_counter(), time.process_time()
    response = await client.post("/v1/chat/completions", json=BODY, headers=headers)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert response.status_code == 200, response.text
    return elapsed, cpu


async def gateway(requests: int, rounds: int) -> None:
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    # The app built and started first runs slower here whatever its settings (measured: the difference follows
    # the order), so half the requests run with each order and the results are pooled.
    for order in ((True, False), (False, True)):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
            migrate(url)
            headers = {"Authorization": f"Bearer {(await _keys(url, shared_org=False))[0]}"}
            apps = {}
            for enabled in order:
                settings = Settings(
                    _env_file=None, database_url=url, metrics_enabled=enabled, sweep_interval_seconds=3600
                )
                upstream = httpx.ASGITransport(app=FakeProvider().app)
                apps[enabled] = create_app(settings, catalog=catalog_for_tests(), upstream_transport=upstream)
            async with LifespanManager(apps[order[0]]), LifespanManager(apps[order[1]]):
                clients = {
                    enabled: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
                    for enabled, app in apps.items()
                }
                for _ in range(20):  # warm-up
                    for enabled in order:
                        await _one(clients[enabled], headers)
                # Request by request, alternating which goes first: load from elsewhere falls on both alike.
                for i in range(rounds * requests // 2):
                    for enabled in order if i % 2 == 0 else order[::-1]:
                        results[enabled].append(await _one(clients[enabled], headers))
                for client in clients.values():
                    await client.aclose()
    print(f"chat request in-process on SQLite, {len(results[True])} requests each way, interleaved one by one:")
    for enabled in (True, False):
        wall = sorted(w for w, _ in results[enabled])
        cpu = [c for _, c in results[enabled]]
        print(
            f"  metrics {'on ' if enabled else 'off'}: wall p50 {wall[len(wall) // 2] * 1000:.2f} ms, "
            f"p99 {wall[int(len(wall) * 0.99)] * 1000:.2f} ms; CPU mean {statistics.fmean(cpu) * 1000:.3f} ms"
        )
    on, off = (statistics.fmean(c for _, c in results[e]) for e in (True, False))
    print(f"  CPU difference per request: {(on - off) * 1e6:+.0f} µs ({(on - off) / off * 100:+.1f} %)")


async def middleware_alone(requests: int) -> None:
    async def empty(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-creditgate-provider", b"x")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        return None

    route = type("R", (), {"path": "/v1/chat/completions"})()
    timings = {}
    for label, app in (
        ("bare app", empty),
        ("+ middleware, metrics off", ObservabilityMiddleware(empty, metrics_enabled=False)),
        ("+ middleware, metrics on", ObservabilityMiddleware(empty, metrics_enabled=True)),
    ):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "route": route}
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        timings[label] = (time.perf_counter() - started) / requests
    print(f"the middleware alone (empty ASGI app, {requests} calls, request line at INFO to a null handler):")
    for label, seconds in timings.items():
        print(f"  {label:28s} {seconds * 1e6:7.1f} µs per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    request_log = logging.getLogger(REQUEST_LOGGER)
    request_log.addHandler(logging.NullHandler())
    request_log.setLevel(logging.INFO)
    request_log.propagate = False
    asyncio.run(gateway(args.requests, args.rounds))
    asyncio.run(middleware_alone(args.requests * 100))


if __name__ == "__main__":
    main()
