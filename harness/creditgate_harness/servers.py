"""Real servers on free loopback ports: an ASGI app in a background thread, or in a uvicorn subprocess.

Plain classes with no pytest in them; the ``live_server`` fixtures are thin wrappers around ``start_live_server``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

from creditgate_harness.services.base import free_port


class ThreadedServer:
    """An ASGI app served by uvicorn in a background thread (the test can still script it directly)."""

    def __init__(self, app: ASGIApp, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


@dataclass
class LiveServer:
    """An ASGI app in its own uvicorn process: ``url``, ``env``, ``read_log()``; ``stop()`` ends it."""

    url: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_live_server(
    app: str,
    *,
    env: dict[str, str],
    log_path: Path,
    workers: int = 1,
    port: int | None = None,
    ready_path: str = "/",
    timeout: float = 120,
) -> LiveServer:
    """Run ``app`` (``"pkg.module:app"``, or ``"pkg.module:factory()"``) under uvicorn; return once it answers.

    Ready means any HTTP answer below 500 on ``ready_path``.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    factory = app.endswith("()")
    args = [sys.executable, "-m", "uvicorn", app.removesuffix("()"), *(["--factory"] if factory else [])]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    log = log_path.open("wb")
    server = LiveServer(url, log_path, env)
    server.process = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}{ready_path}", timeout=1).status_code < 500:
                return server
        except httpx.HTTPError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{app} at {url} did not answer on {ready_path}:\n{server.read_log()}")
        time.sleep(0.1)
