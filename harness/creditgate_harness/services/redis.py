"""Redis for tests: ``HARNESS_REDIS_URL``, a testcontainers container, or a local ``redis-server``."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from creditgate_harness.services.base import (
    Service,
    ServiceUnavailable,
    docker_engine_answers,
    free_port,
    try_backends,
    wait_until_up,
)

ENV_URL = "HARNESS_REDIS_URL"


def server_version(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        info = client.info("server")
        client.close()
    except Exception as exc:
        raise ServiceUnavailable(f"cannot connect to {url}: {exc}") from exc
    return str(info["redis_version"])


def _external() -> Service:
    url = os.environ.get(ENV_URL)
    if not url:
        raise ServiceUnavailable(f"{ENV_URL} is not set")
    return Service("redis", url, server_version(url), "external")


def _docker() -> Service:
    reason = docker_engine_answers()
    if reason:
        raise ServiceUnavailable(reason)
    from testcontainers.redis import RedisContainer  # pragma: no cover - needs a Docker engine

    # A fixed host port: Docker would give a restarted container a new one, and the URL must survive restart().
    container = RedisContainer("redis:7-alpine").with_bind_ports(6379, free_port())  # pragma: no cover
    container.start()  # pragma: no cover
    host, port = container.get_container_host_ip(), container.get_exposed_port(6379)  # pragma: no cover
    url = f"redis://{host}:{port}/0"  # pragma: no cover

    def up() -> None:  # pragma: no cover
        container.get_wrapped_container().start()
        wait_until_up(lambda: server_version(url), what=f"redis at {url}")

    down = container.get_wrapped_container().stop  # pragma: no cover
    return Service("redis", url, server_version(url), "docker", container.stop, down, up)  # pragma: no cover


def _local() -> Service:
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceUnavailable("redis-server not found: apt-get install redis-server, or set HARNESS_REDIS_URL")
    root = Path(tempfile.mkdtemp(prefix="hrd", dir="/tmp"))
    port = free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(root),
        "--logfile",
        str(root / "log"),
    ]
    url = f"redis://127.0.0.1:{port}/0"
    processes = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]

    def down() -> None:  # SIGTERM: with nothing to save (--save ""), redis-server exits at once
        process = processes[-1]
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop() -> None:
        down()
        shutil.rmtree(root, ignore_errors=True)

    def up() -> None:  # a fresh redis-server on the same port: empty, as after a real restart without persistence
        processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        answer()

    def answer() -> str:
        deadline = time.monotonic() + 15
        while True:
            try:
                return server_version(url)
            except ServiceUnavailable:
                if processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise ServiceUnavailable(f"local redis-server failed to start (see {root / 'log'})") from None
                time.sleep(0.05)

    try:
        version = answer()
    except ServiceUnavailable:
        stop()
        raise
    atexit.register(stop)
    return Service("redis", url, version, "local", stop, down, up)


def start_redis(backend: str = "auto") -> Service:
    """A running Redis from the first backend that works (or exactly ``backend``)."""
    return try_backends("redis", backend, {"external": _external, "docker": _docker, "local": _local})
