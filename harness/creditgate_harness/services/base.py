"""What a started service looks like, and the helpers every backend shares.

A service the harness started itself (the ``local`` and ``docker`` backends) can be taken down and brought back
on the same URL mid-test: ``service.restart(down=2)``, or ``with service.outage(): ...``; a Postgres also
``service.crash()``: killed without a clean shutdown, as a crashed server. An ``external`` one (a
URL the machine gives) belongs to someone else: ``restart()`` raises ``NotRestartable`` saying so, and the
``private_postgres``/``private_redis`` fixtures give a test a restartable server of its own instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when an event loop is running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


BACKENDS = ("auto", "external", "docker", "local")


class ServiceUnavailable(Exception):
    """No backend could provide the service; the message says what was tried and how to fix it."""


class NotRestartable(RuntimeError):
    """The service is not the harness's own (``external``), so the harness cannot take it down or bring it back."""


@dataclass
class Service:
    """A running service: its URL, server version and which backend started it.

    ``restart()``/``outage()`` take the server down and bring it back on the same URL (``restartable``: the
    ``local`` and ``docker`` backends); ``stop()`` ends it for good."""

    name: str
    url: str
    version: str
    backend: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)
    _down: Callable[[], None] | None = field(default=None, repr=False)  # the server stopped, its data and port kept
    _up: Callable[[], None] | None = field(default=None, repr=False)  # started again; returns once it answers
    _kill: Callable[[], None] | None = field(default=None, repr=False)  # stopped as a crash would, data kept

    @property
    def restartable(self) -> bool:
        """Whether the harness owns this server and can take it down and bring it back (not ``external``)."""
        return self._down is not None and self._up is not None and self._stop is not None

    def restart(self, *, down: float = 0.0) -> None:
        """Stop the server, wait ``down`` seconds, start it again on the same URL; return once it answers.

        Clients see refused connections meanwhile and must reconnect after (connections in a pool are dead).
        Postgres keeps its data; Redis comes back empty (the harness's Redis keeps nothing on disk).
        ``NotRestartable`` for an ``external`` service."""
        with self.outage():
            time.sleep(down)

    def crash(self, *, down: float = 0.0) -> None:
        """Kill the server with no clean shutdown, wait ``down`` seconds, start it again on the same URL (it recovers
        from its own log); return once it answers. Postgres loses what it had not yet written out, such as an
        asynchronous commit's WAL still in its buffers (``local``: ``pg_ctl stop -m immediate``). ``NotRestartable``
        for an ``external`` service or one that cannot be killed so (Redis)."""
        kill, up = self._kill, self._up
        if kill is None or up is None or not self.restartable:
            raise NotRestartable(self._why_not_restartable() if not self.restartable else f"{self}: cannot crash it")
        kill()
        try:
            time.sleep(down)
        finally:
            up()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The server down inside the ``with`` block, back on the same URL after it (also when the block raises)."""
        down, up = self._down, self._up
        if down is None or up is None or not self.restartable:
            raise NotRestartable(self._why_not_restartable())
        down()
        try:
            yield
        finally:
            up()

    def _why_not_restartable(self) -> str:
        if self._stop is None and self.backend != "external":
            return f"{self}: already stopped for good (stop() was called)"
        return (
            f"{self}: the harness did not start this server ({self.backend}: a URL the machine gives, "
            f"HARNESS_{self.name.upper()}_URL), so it cannot take it down or bring it back. For a fault test use the "
            f"private_{self.name} fixture (a {self.name} of the test session's own), or start_{self.name}('local'); "
            "or run with --harness-services=local (or docker)"
        )

    def stop(self) -> None:
        """End the server for good (a no-op for ``external``, which the harness does not own)."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.backend}) at {self.url}"


def wait_until_up(check: Callable[[], object], *, what: str, timeout: float = 30) -> None:
    """Call ``check`` until it returns without raising; ``ServiceUnavailable`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{what} did not answer within {timeout:g} s: {exc}") from exc
            time.sleep(0.05)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def docker_engine_answers() -> str | None:
    """``None`` if a Docker engine answers a ping, else why not (the client binary alone proves nothing)."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed (pip install testcontainers)"
    try:
        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:
        return f"no Docker engine answered a ping ({type(exc).__name__})"
    return None


def chosen_backend(option: str | None) -> str:
    backend = (option or os.environ.get("HARNESS_SERVICES") or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"HARNESS_SERVICES={backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


def try_backends(name: str, backend: str, attempts: dict[str, Callable[[], Service]]) -> Service:
    """Run the backends in order (or just the forced one); collect why each failed."""
    order = list(attempts) if backend == "auto" else [backend]
    reasons: list[str] = []
    for candidate in order:
        try:
            return attempts[candidate]()
        except ServiceUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
    raise ServiceUnavailable(f"{name} unavailable — " + "; ".join(reasons))
