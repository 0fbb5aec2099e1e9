"""The gateway under either ASGI server `creditgate serve` offers, and the CPU time a server's processes used.

``start(server, env=…, log_path=…)`` runs ``creditgate.main:create_app_from_env()`` in one worker under uvicorn
(uvloop + httptools) or granian (its Rust HTTP server, asyncio on uvloop), the same command lines ``creditgate
serve --server`` builds (cli.py), and returns once ``/health`` answers. ``cpu_seconds(pid)`` is the user + system
time of a process and its descendants (granian serves from a child of the process it starts), read from /proc:
CPU time per request is less sensitive than RPS to a machine shared with other work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from creditgate.cli import server_command
from creditgate_harness.servers import LiveServer
from creditgate_harness.services.base import free_port

APP = "creditgate.main:create_app_from_env"
_TICK = os.sysconf("SC_CLK_TCK")


def start(server: str, *, env: dict[str, str], log_path: Path, timeout: float = 45) -> LiveServer:
    """The gateway under ``server`` (``uvicorn`` or ``granian``), one worker, on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", *server_command(server, host="127.0.0.1", port=port, workers=1)]
    log = log_path.open("wb")
    live = LiveServer(url=url, log_path=log_path, env=env, args=command, ready_path="/health")
    live.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.process.poll() is not None:
            raise RuntimeError(f"{server} exited with {live.process.returncode}:\n{live.read_log()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code < 500:
                return live
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    live.stop()
    raise RuntimeError(f"{server} did not answer on {url} within {timeout:g} s:\n{live.read_log()[-3000:]}")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and every descendant still running (0 where /proc is missing)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (man 5 proc, fields 14 and 15)
        todo += _children(current)
    return total
