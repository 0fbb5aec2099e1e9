"""What the benchmarks share: the fake upstream as a server, and a throwaway Postgres database."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from creditgate_harness.services import start_postgres
from creditgate_harness.services.base import free_port, run_sync
from creditgate_harness.services.postgres import create_database, database_url, drop_database, plain_url


@contextmanager
def fake_upstream() -> Iterator[str]:
    """``python -m creditgate_harness.fakes.providers`` on a free port; yields its base URL once it answers."""
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "creditgate_harness.fakes.providers", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/v1/models")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        fake.terminate()


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def postgres_database(prefix: str, *, durable: bool = False) -> Iterator[tuple[str, str]]:
    """A new database on the harness's Postgres (``ServiceUnavailable`` if none), dropped afterwards;
    yields ``(asyncpg URL, a description of the server)``. Its commits are asynchronous, as every test database's,
    unless ``durable``: then they take the server's ``synchronous_commit`` (on, in production: each waits for the
    disk)."""
    postgres = start_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    create_database(postgres.url, name)
    if durable:
        run_sync(_execute(postgres.url, f'ALTER DATABASE "{name}" RESET synchronous_commit'))
    try:
        yield database_url(postgres.url, name), str(postgres)
    finally:
        drop_database(postgres.url, name)
        postgres.stop()
