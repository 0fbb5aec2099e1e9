"""app/cli.py: migrate, create-key, `serve --demo` end to end in a subprocess (the entry point as operators run it),
and every operator mistake as one line with exit code 2 (the table in docs/operators.md, "Errors"), checked through
``main(argv)`` in this process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

from creditgate.cli import build_parser, main
from creditgate.testing.auditor import audit_url
from creditgate_harness.services.base import free_port


def cli_process(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m creditgate.cli …`` in a subprocess: the entry point exactly as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "creditgate.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Ran:
    """``creditgate.cli.main(args)`` in this process, with ``env`` and ``cwd``, its output and exit code captured:
    the same code path as the entry point (``cli_process`` covers that), without an interpreter start per case."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.chdir(cwd), redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return Ran(code, out.getvalue(), err.getvalue())


def test_migrate_and_create_key(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {"CREDITGATE_DATABASE_URL": url}
    assert cli_process("migrate", cwd=tmp_path, env=env).returncode == 0
    first = cli_process("create-key", "--email", "a@example.test", "--credits", "12.50", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"cg_[\w-]{43}\n", first.stdout)
    second = cli_process("create-key", "--email", "a@example.test", "--credits", "99", cwd=tmp_path, env=env)
    assert second.stdout != first.stdout  # a second key for the same user, no second grant
    bad = cli_process("create-key", "--email", "b@example.test", "--credits", "1.001", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "not a credit amount" in bad.stderr
    report = audit_url(url)
    assert report.ok
    assert report.entries == 1


@pytest.mark.slow
def test_serve_demo_answers_health_and_a_chat(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "creditgate.cli", "serve", "--demo", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        key = ""
        while not key:
            line = process.stdout.readline()
            assert line, "serve --demo exited before printing a key"
            key = line.strip() if line.strip().startswith("cg_") else ""
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["database"] == "connected"
        headers = {"Authorization": f"Bearer {key}"}
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert chat.status_code == 200, chat.text
        balance = httpx.get(f"{base}/user/balance", headers=headers).json()["balance"]
        summary = httpx.get(f"{base}/user/transactions/summary", headers=headers).json()
        assert balance == summary["net_balance"] == "999.90"
    finally:
        process.terminate()
        process.wait(15)
    assert audit_url(f"sqlite+aiosqlite:///{tmp_path / 'creditgate-demo.db'}").ok


def _closed_port() -> int:
    return free_port()  # nothing listens there


# (arguments, environment, the exact line on stderr) — every one exits 2 with no traceback.
BAD_INPUTS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "postgres on a closed port": (
        ["migrate"],
        {"CREDITGATE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:{closed}/creditgate"},
        "creditgate: CREDITGATE_DATABASE_URL: cannot connect to 127.0.0.1:{closed} (connection refused) — "
        "is Postgres running?",
    ),
    "postgres:// (no driver named) is asyncpg": (
        ["migrate"],
        {"CREDITGATE_DATABASE_URL": "postgres://postgres@127.0.0.1:{closed}/creditgate"},
        "creditgate: CREDITGATE_DATABASE_URL: cannot connect to 127.0.0.1:{closed} (connection refused) — "
        "is Postgres running?",
    ),
    "an unsupported database": (
        ["migrate"],
        {"CREDITGATE_DATABASE_URL": "mysql://root@127.0.0.1/creditgate"},
        "creditgate: CREDITGATE_DATABASE_URL: unsupported scheme mysql:// (got 'mysql://root@127.0.0.1/creditgate') "
        "— use postgresql+asyncpg://… or sqlite+aiosqlite:///…",
    ),
    "a SQLite file in a missing directory": (
        ["migrate"],
        {"CREDITGATE_DATABASE_URL": "sqlite+aiosqlite:///{tmp}/missing/x.db"},
        "creditgate: CREDITGATE_DATABASE_URL: cannot open SQLite file {tmp}/missing/x.db (unable to open database "
        "file) — does its directory exist, and may this user write there?",
    ),
    "a missing catalog file": (
        ["serve", "--port", "{free}"],
        {"CREDITGATE_CATALOG": "{tmp}/nope.json"},
        "creditgate: CREDITGATE_CATALOG: no such file {tmp}/nope.json — point it at a catalog JSON file or unset it",
    ),
    "a catalog that is not JSON": (
        ["serve", "--port", "{free}"],
        {"CREDITGATE_CATALOG": "{tmp}/broken.json"},
        "creditgate: CREDITGATE_CATALOG: {tmp}/broken.json is not valid JSON (Expecting value: line 1 column 16 "
        "(char 15)) — fix the file, or unset CREDITGATE_CATALOG for the built-in catalog",
    ),
    "MARGIN=abc": (
        ["serve", "--port", "{free}"],
        {"CREDITGATE_MARGIN": "abc"},
        "creditgate: CREDITGATE_MARGIN: input should be a valid decimal (got 'abc') — multiplier on vendor cost; "
        "unset it for the default (1.5)",
    ),
    "--credits 1e9": (
        ["create-key", "--email", "a@example.com", "--credits", "1e9"],
        {},
        "creditgate create-key: argument --credits: '1e9' is not a credit amount like 100 or 12.50 "
        "(see creditgate create-key --help)",
    ),
    "--credits above the bound": (
        ["create-key", "--email", "a@example.com", "--credits", "1000000.01"],
        {},
        "creditgate create-key: argument --credits: 1000000.01 is more than 1,000,000 credits; grant more with "
        "POST /admin/credits (see creditgate create-key --help)",
    ),
    "--email notanemail": (
        ["create-key", "--email", "notanemail"],
        {},
        "creditgate create-key: argument --email: 'notanemail' is not an email address like you@example.com "
        "(see creditgate create-key --help)",
    ),
    "create-key --demo before the demo ran here": (
        ["create-key", "--demo", "--email", "a@example.com"],
        {},
        "creditgate: --demo: no demo database at {tmp}/creditgate-demo.db — start `creditgate serve --demo` in "
        "this directory first",
    ),
    "the demo with several workers": (
        ["serve", "--demo", "--workers", "2"],
        {},
        "creditgate: --workers: the demo runs one worker (its fake Stripe keeps checkouts in memory) — drop --workers",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, case: str) -> None:
    args, env, line = BAD_INPUTS[case]
    (tmp_path / "broken.json").write_text('{"providers": [')
    values = {"tmp": str(tmp_path), "closed": str(_closed_port()), "free": str(free_port())}
    fill = lambda text: text.format(**values)  # noqa: E731
    env = {"CREDITGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/ok.db", **{k: fill(v) for k, v in env.items()}}
    result = cli(*[fill(a) for a in args], cwd=tmp_path, env=env)
    assert (result.returncode, result.stderr, result.stdout) == (2, fill(line) + "\n", "")
    assert not (tmp_path / "ok.db").exists()  # failed before migrating anything


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_database_that_does_not_exist(tmp_path: Path, database_url: str) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/creditgate_no_such_db"
    result = cli("migrate", cwd=tmp_path, env={"CREDITGATE_DATABASE_URL": missing})
    assert result.returncode == 2
    assert result.stderr.startswith(
        'creditgate: CREDITGATE_DATABASE_URL: database "creditgate_no_such_db" does not exist — create it (createdb '
    )
    assert result.stderr.count("\n") == 1


def test_debug_adds_the_traceback(tmp_path: Path) -> None:
    env = {"CREDITGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/x"}
    quiet = cli("migrate", cwd=tmp_path, env=env)
    loud = cli("--debug", "migrate", cwd=tmp_path, env=env)
    also_loud = cli("migrate", "--debug", cwd=tmp_path, env=env)
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr
    assert "Traceback" in also_loud.stderr
    assert loud.stderr.endswith(quiet.stderr)
    assert loud.returncode == also_loud.returncode == 2


def test_a_busy_port_fails_before_a_demo_key_is_issued(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "--demo", "--port", str(port), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"creditgate: --port {port}: 127.0.0.1:{port} is already in use — stop what listens there, "
        "or pick another port with --port\n"
    )
    assert not (tmp_path / "creditgate-demo.db").exists()


def test_every_option_has_help_with_its_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "serve" in a.choices).choices  # type: ignore[union-attr]
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            assert "default" in action.help or "required" in action.help, f"{name} {action.option_strings}"


def test_create_key_demo_targets_the_demo_database(tmp_path: Path) -> None:
    demo_db = tmp_path / "creditgate-demo.db"
    assert cli("migrate", "--demo", cwd=tmp_path).returncode == 0
    assert demo_db.exists()
    created = cli("create-key", "--demo", "--email", "b@example.test", "--credits", "5", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert not (tmp_path / "creditgate.db").exists()
    report = audit_url(f"sqlite+aiosqlite:///{demo_db}")
    assert report.ok
    assert report.entries == 1


@pytest.mark.parametrize("args", [("--help",), ("migrate", "--demo")])
def test_a_missing_prometheus_multiproc_dir_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Issue 26, F11: a traceback and exit 1 before, even for --help."""
    missing = tmp_path / "nope"
    ran = cli_process(*args, cwd=tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert ran.returncode == 2
    assert ran.stderr == (
        f"creditgate: PROMETHEUS_MULTIPROC_DIR: {missing} is not a directory — create it (empty) or unset it\n"
    )


def test_workers_whose_pools_outgrow_postgres_are_refused_before_anything_is_migrated(
    postgres_service: Any, tmp_path: Path
) -> None:
    """Issue 26: `--workers 4` with default pools can open 244 connections against Postgres's 100. One line, exit
    2, naming the fix — and the empty database is left empty."""
    import asyncpg

    from creditgate_harness.services.postgres import create_database, drop_database

    name = f"cli_budget_{os.getpid()}"
    url = create_database(postgres_service.url, name)
    try:
        for workers, fix in (("400", "— run fewer --workers"), ("4", "— set CREDITGATE_DB_POOL_SIZE=")):
            env = {"CREDITGATE_DATABASE_URL": url, "CREDITGATE_DB_POOL_SIZE": "20"}
            ran = cli_process("serve", "--workers", workers, "--port", str(free_port()), cwd=tmp_path, env=env)
            assert ran.returncode == 2, ran.stderr
            assert ran.stderr.startswith(f"creditgate: --workers: {workers} workers may open "), ran.stderr
            assert "Postgres connections (61 each at CREDITGATE_DB_POOL_SIZE 20)" in ran.stderr
            assert fix in ran.stderr
            assert ran.stderr.count("\n") == 1

        async def tables() -> int:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                return int(await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
            finally:
                await conn.close()

        assert asyncio.run(tables()) == 0  # nothing migrated
    finally:
        drop_database(postgres_service.url, name)
