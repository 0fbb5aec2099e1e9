"""Real servers on free loopback ports: an ASGI app in a background thread, or in a uvicorn subprocess.

Plain classes with no pytest in them; the ``live_server`` fixtures are thin wrappers around ``start_live_server``.

A ``LiveServer`` is also a fault target. ``worker_pids()`` lists uvicorn's worker processes, ``kill_worker()``
kills one (uvicorn's supervisor starts another; by default it returns once the new worker serves),
``kill_all()`` kills the supervisor and every worker (a crash of the whole server) and ``restart()`` starts it
again on the same port.

Platforms: Linux reads ``/proc``, and there "serves" is exact: the worker's event loop polls the server's listening
socket (an epoll instance of the worker holds it), not merely that its process exists — a replacement worker takes
a while to import the app. macOS and the BSDs find the workers with ``pgrep`` and take "the server answers with all
its workers alive" instead. Windows is not supported (no ``SIGKILL``).
"""

from __future__ import annotations

import os
import shutil
import signal
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

_WORKER_MARK = "spawn_main"  # uvicorn's workers are multiprocessing "spawn" children; its resource tracker is not
_SIGKILL: int = getattr(signal, "SIGKILL", 9)  # no SIGKILL on Windows: the module still imports there


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
    """An ASGI app in its own uvicorn process: ``url``, ``env``, ``read_log()``; ``stop()`` ends it.

    Faults: ``worker_pids()``, ``kill_worker()``, ``kill_all()``, ``restart()`` (see the module's docstring).
    """

    url: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    args: list[str] = field(default_factory=list, repr=False)  # the uvicorn command line; restart() runs it again
    workers: int = 1
    ready_path: str = "/"
    timeout: float = 120

    @property
    def name(self) -> str:
        """``the live server <app> at <url>``, for messages."""
        app = next((a for a in self.args[3:] if ":" in a), "") if self.args else ""
        return f"the live server {app} at {self.url}" if app else f"the live server at {self.url}"

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> LiveServer:
        """Run the command line; return once the server answers (``wait_ready``), else stop it and raise."""
        if not self.args:
            raise RuntimeError(f"{self.name} has no command line to start (use start_live_server)")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, env={**os.environ, **self.env}, stdout=log, stderr=log)
        try:
            self.wait_ready()
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the server answers below 500 on ``ready_path`` with all its ``workers`` up.

        ``RuntimeError`` with the server's log when its process exits or ``timeout`` (default: the server's
        ``timeout``) passes first."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.read_log()}")
            try:
                answered = httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code < 500
            except httpx.HTTPError:
                answered = False
            if answered and len(pids := self.worker_pids()) >= self.workers and self._all_serve(pids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not answer on {self.ready_path} with {self.workers} "
                    f"worker(s) within {timeout:g} s:\n{self.read_log()}"
                )
            time.sleep(0.05)

    def _all_serve(self, pids: list[int]) -> bool:
        """Whether every worker in ``pids`` accepts connections (Linux); ``True`` where that cannot be seen."""
        inode = _listening_inode(int(self.url.rsplit(":", 1)[1].split("/")[0]))
        return inode is None or all(_polls(pid, inode) for pid in pids)

    def worker_pids(self) -> list[int]:
        """The pids of the processes serving requests: uvicorn's workers, or the server itself with one worker.

        Empty when the server is not running."""
        if self.process is None or self.process.poll() is not None:
            return []
        if self.workers == 1:  # uvicorn runs no supervisor for one worker: the process serves
            return [self.process.pid]
        return _children(self.process.pid, marked=_WORKER_MARK)

    def kill_worker(
        self, pid: int | None = None, *, sig: int = _SIGKILL, wait: bool = True, timeout: float = 60
    ) -> int:
        """Kill one worker (``pid``, or the first of ``worker_pids()``) with ``sig``; return the pid killed.

        uvicorn's supervisor notices within half a second and starts another worker. With ``wait`` (the default)
        this returns once the server has ``workers`` live workers again, none of them the one killed, and answers
        on ``ready_path``."""
        if self.workers < 2:
            raise RuntimeError(
                f"{self.name} runs one worker and no supervisor, so nothing would replace a killed "
                "worker: start it with workers=2 or more (live_server_factory(workers=2)), or crash it with "
                "kill_all() and start it again with restart()"
            )
        pids = self.worker_pids()
        if not pids:
            raise RuntimeError(f"{self.name} has no worker to kill (is it running?)")
        if pid is None:
            pid = pids[0]
        elif pid not in pids:
            raise ValueError(f"pid {pid} is not a worker of {self.name}: its workers are {pids}")
        os.kill(pid, sig)
        if wait:
            deadline = time.monotonic() + timeout
            while pid in (now := self.worker_pids()) or len(now) < self.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"worker {pid} of {self.name} was not replaced within {timeout:g} s "
                        f"(workers now: {now}):\n{self.read_log()}"
                    )
                time.sleep(0.05)
            self.wait_ready(max(1.0, deadline - time.monotonic()))
        return pid

    def kill_all(self, *, sig: int = _SIGKILL) -> list[int]:
        """Kill the supervisor and every worker with ``sig`` (a crash of the whole server; nothing restarts it).

        Returns the pids killed; ``restart()`` starts the server again on the same port."""
        if self.process is None or self.process.poll() is not None:
            return []
        supervisor = self.process.pid
        if self.workers > 1:
            os.kill(supervisor, signal.SIGSTOP)  # frozen, it cannot start a replacement while its workers die
        children = _children(supervisor, marked="") if self.workers > 1 else []
        for pid in children:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        os.kill(supervisor, sig)
        if self.workers > 1 and sig != _SIGKILL:
            os.kill(supervisor, signal.SIGCONT)  # to act on ``sig``
        self.process.wait()
        return [supervisor, *children]

    def restart(self, *, timeout: float | None = None) -> LiveServer:
        """Stop the server if it still runs, start it again on the same port with the same command line and
        environment; return once it answers (``wait_ready``)."""
        self.stop()
        if timeout is not None:
            self.timeout = timeout
        return self.start()


def _listening_inode(port: int) -> str | None:
    """The inode of the TCP socket listening on ``port`` (Linux's ``/proc/net/tcp``), or ``None``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return inode
    return None


def _polls(pid: int, inode: str) -> bool:
    """Whether an epoll instance of process ``pid`` watches socket ``inode``: its event loop accepts on it."""
    try:
        mine, epolls = set(), []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target == f"socket:[{inode}]":
                mine.add(fd.name)
            elif target == "anon_inode:[eventpoll]":
                epolls.append(fd.name)
        for epoll in epolls:
            for line in Path(f"/proc/{pid}/fdinfo/{epoll}").read_text().splitlines():
                if line.startswith("tfd:") and line.split()[1] in mine:
                    return True
    except OSError:  # the process exited while we looked
        return False
    return False


def _children(pid: int, *, marked: str) -> list[int]:
    """Live (not zombie) children of ``pid`` whose command line contains ``marked``, in pid order."""
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():  # Linux
        found = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # exited while we looked
                continue
            # "pid (comm) state ppid …": comm may hold spaces and parentheses, so split after the last ')'.
            state, parent = stat.rsplit(")", 1)[1].split()[:2]
            if int(parent) == pid and state != "Z" and marked in cmdline:
                found.append(int(entry.name))
        return sorted(found)
    pgrep = shutil.which("pgrep")
    if pgrep is None:
        raise RuntimeError("finding a live server's workers needs /proc (Linux) or pgrep (macOS, BSD)")
    out = subprocess.run([pgrep, "-P", str(pid), "-f", marked], capture_output=True, text=True, check=False)
    return sorted(int(p) for p in out.stdout.split())


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

    Ready means any HTTP answer below 500 on ``ready_path``, with all ``workers`` started.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: a live server needs at least one worker")
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    factory = app.endswith("()")
    args = [sys.executable, "-m", "uvicorn", app.removesuffix("()"), *(["--factory"] if factory else [])]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    return LiveServer(url, log_path, env, args=args, workers=workers, ready_path=ready_path, timeout=timeout).start()
