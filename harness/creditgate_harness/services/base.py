"""What a started service looks like, and the helpers every backend shares."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
from collections.abc import Callable
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


@dataclass
class Service:
    """A running service: its URL, server version and which backend started it."""

    name: str
    url: str
    version: str
    backend: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.backend}) at {self.url}"


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
