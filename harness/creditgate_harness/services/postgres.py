"""Postgres for tests: ``HARNESS_POSTGRES_URL``, a testcontainers container, or local ``initdb``/``pg_ctl``.

The local backend is root-safe: Postgres refuses to run as root, so as root the data directory
is handed to the ``postgres`` user (or ``nobody``) and every server process runs as that user.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from creditgate_harness.services.base import (
    Service,
    ServiceUnavailable,
    docker_engine_answers,
    free_port,
    run_sync,
    try_backends,
    wait_until_up,
)

ENV_URL = "HARNESS_POSTGRES_URL"


def plain_url(url: str) -> str:
    """A libpq URL (no SQLAlchemy driver suffix), as asyncpg wants it."""
    return url.replace("postgresql+asyncpg://", "postgresql://").replace("postgres://", "postgresql://")


async def _version(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(plain_url(url), timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def server_version(url: str) -> str:
    try:
        return str(run_sync(_version(url)))
    except Exception as exc:
        raise ServiceUnavailable(f"cannot connect to {url}: {exc}") from exc


def _external() -> Service:
    url = os.environ.get(ENV_URL)
    if not url:
        raise ServiceUnavailable(f"{ENV_URL} is not set")
    return Service("postgres", plain_url(url), server_version(url), "external")


def _docker(settings: Mapping[str, str]) -> Service:
    reason = docker_engine_answers()
    if reason:
        raise ServiceUnavailable(reason)
    from testcontainers.postgres import PostgresContainer  # pragma: no cover - needs a Docker engine

    # A fixed host port: Docker would give a restarted container a new one, and the URL must survive restart().
    container = PostgresContainer("postgres:16-alpine", driver=None).with_bind_ports(
        5432, free_port()
    )  # pragma: no cover
    if settings:  # pragma: no cover
        container = container.with_command(" ".join(["postgres", *_flags(settings)]))
    container.start()  # pragma: no cover
    url = container.get_connection_url()  # pragma: no cover

    def up() -> None:  # pragma: no cover
        container.get_wrapped_container().start()
        wait_until_up(lambda: run_sync(_version(url)), what=f"postgres at {url}")

    down = container.get_wrapped_container().stop  # pragma: no cover
    kill = container.get_wrapped_container().kill  # pragma: no cover
    return Service("postgres", url, server_version(url), "docker", container.stop, down, up, kill)  # pragma: no cover


def _flags(settings: Mapping[str, str]) -> list[str]:
    return [f"-c {name}={value}" for name, value in settings.items()]


def find_bin(name: str) -> str | None:
    """A Postgres binary from PATH or Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]), reverse=True
    )
    return candidates[0] if candidates else None


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServiceUnavailable("running as root and no 'postgres' or 'nobody' user to run Postgres as")


def _local(settings: Mapping[str, str]) -> Service:
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServiceUnavailable("initdb/pg_ctl not found: apt-get install postgresql, or set HARNESS_POSTGRES_URL")
    user = _unprivileged_user()
    # A short path: the Unix socket path must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="hpg", dir="/tmp"))
    data, log = root / "data", root / "log"
    as_user: dict[str, Any] = {}
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    try:
        subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            env=env,
            cwd=root,
            **as_user,
        )
        port = free_port()
        opts = " ".join(
            [
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                *_flags(settings),  # after the defaults: the last -c of a name wins
            ]
        )
        subprocess.run(
            [pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            env=env,
            cwd=root,
            **as_user,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        raise ServiceUnavailable(f"local Postgres failed to start: {exc} {detail.decode(errors='replace')}") from exc

    def stop() -> None:
        subprocess.run(
            [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, env=env, cwd="/", **as_user
        )
        shutil.rmtree(root, ignore_errors=True)

    def halt(mode: str) -> None:
        subprocess.run(
            [pg_ctl, "-D", str(data), "-m", mode, "-w", "stop"],
            check=True,
            capture_output=True,
            env=env,
            cwd="/",
            **as_user,
        )

    def down() -> None:  # a fast shutdown, as an operator's restart: sessions end, the data stays
        halt("fast")

    def kill() -> None:  # the postmaster and every backend quit at once: no checkpoint, WAL buffers not written
        halt("immediate")

    def up() -> None:
        subprocess.run(
            [pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            env=env,
            cwd=root,
            **as_user,
        )

    atexit.register(stop)  # also on Ctrl-C and on a crashed session
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return Service("postgres", url, server_version(url), "local", stop, down, up, kill)


def start_postgres(backend: str = "auto", *, settings: Mapping[str, str] | None = None) -> Service:
    """A running Postgres from the first backend that works (or exactly ``backend``).

    ``settings`` (``{"synchronous_commit": "on"}``) are passed to a server the harness starts, over its defaults
    (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off: fast, and safe from anything but a power cut);
    with settings, ``external`` is skipped (that server is configured by whoever runs it)."""
    chosen = dict(settings or {})

    def external() -> Service:
        if chosen:
            raise ServiceUnavailable(f"settings {chosen} need a server of the harness's own (local or docker)")
        return _external()

    attempts = {"external": external, "docker": lambda: _docker(chosen), "local": lambda: _local(chosen)}
    return try_backends("postgres", backend, attempts)


def database_url(server_url: str, database: str) -> str:
    """The async SQLAlchemy URL (asyncpg) of ``database`` on the server at ``server_url``."""
    base = plain_url(server_url).rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{database}"


async def _admin(server_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_url(server_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """``CREATE DATABASE name [TEMPLATE template]``, its commits asynchronous (as on the harness's own server, which
    runs with ``synchronous_commit=off``: a test database need not survive a power cut, and a machine's server
    otherwise waits for the disk on every commit); returns its async SQLAlchemy URL."""
    suffix = f' TEMPLATE "{template}"' if template else ""
    run_sync(_admin(server_url, f'CREATE DATABASE "{name}"{suffix}'))
    run_sync(_admin(server_url, f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)``."""
    run_sync(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
