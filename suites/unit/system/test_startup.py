"""app/system/startup.py: configuration and connection problems become one line naming the setting and the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from creditgate.system import startup
from creditgate.system.startup import StartupError
from creditgate_harness.services.base import free_port


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"CREDITGATE_MARGIN": "abc"},
            "CREDITGATE_MARGIN: input should be a valid decimal (got 'abc') — multiplier on vendor cost; "
            "unset it for the default (1.5)",
        ),
        (
            {"CREDITGATE_DATABASE_URL": "mysql://u@h/db"},
            "CREDITGATE_DATABASE_URL: unsupported scheme mysql:// (got 'mysql://u@h/db') — "
            "use postgresql+asyncpg://… or sqlite+aiosqlite:///…",
        ),
        (
            {"CREDITGATE_BYOK_ENCRYPTION_KEY": "hunter2-not-a-key"},
            "CREDITGATE_BYOK_ENCRYPTION_KEY: not a Fernet key — generate one: python -c "
            "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'",
        ),
        (
            {"CREDITGATE_OIDC_ISSUER": "https://sso.example/realms/a"},
            "CREDITGATE_OIDC_AUDIENCE: is required with CREDITGATE_OIDC_ISSUER (tokens' aud is checked)",
        ),
    ],
)
def test_settings_errors_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StartupError) as raised:
        startup.load_settings(_env_file=None)
    assert str(raised.value) == line
    assert "hunter2" not in str(raised.value)  # a secret's value is never echoed


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgres://u@h:5/db", "postgresql+asyncpg://u@h:5/db"),
        ("postgresql://u@h:5/db", "postgresql+asyncpg://u@h:5/db"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("postgresql+asyncpg://u@h:5/db", "postgresql+asyncpg://u@h:5/db"),
    ],
)
def test_driverless_database_urls_mean_the_async_drivers(url: str, normalized: str) -> None:
    assert startup.load_settings(_env_file=None, database_url=url).database_url == normalized


def test_catalog_problems_are_found_before_anything_else(tmp_path: Path) -> None:
    broken, invalid = tmp_path / "broken.json", tmp_path / "invalid.json"
    broken.write_text('{"providers": [')
    invalid.write_text('{"providers": [], "models": [{"id": "x"}]}')
    expected = {
        tmp_path / "missing.json": f"CREDITGATE_CATALOG: no such file {tmp_path / 'missing.json'} — "
        "point it at a catalog JSON file or unset it",
        broken: f"CREDITGATE_CATALOG: {broken} is not valid JSON (Expecting value: line 1 column 16 (char 15)) — "
        "fix the file, or unset CREDITGATE_CATALOG for the built-in catalog",
        invalid: f"CREDITGATE_CATALOG: {invalid}: models.0.providers: Field required — "
        "fix the file, or unset CREDITGATE_CATALOG for the built-in catalog",
    }
    for path, line in expected.items():
        with pytest.raises(StartupError) as raised:
            startup.load_catalog(path)
        assert str(raised.value) == line
    assert startup.load_catalog(None).models  # the built-in one loads


async def test_database_problems(tmp_path: Path, postgres_service: object) -> None:
    port = free_port()
    cases = {
        f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x": f"CREDITGATE_DATABASE_URL: cannot connect to "
        f"127.0.0.1:{port} (connection refused) — is Postgres running?",
        f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db": f"CREDITGATE_DATABASE_URL: cannot open SQLite file "
        f"{tmp_path}/no/such/dir/x.db (unable to open database file) — does its directory exist, and may this "
        "user write there?",
    }
    url = postgres_service.url  # type: ignore[attr-defined]
    base = url.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0]
    host_port = base.rsplit("@", 1)[1]
    host, pg_port = host_port.split(":")
    user = base.split("://", 1)[1].split("@")[0].split(":")[0]
    cases[f"{base}/creditgate_nope"] = (
        'CREDITGATE_DATABASE_URL: database "creditgate_nope" does not exist — create it '
        f"(createdb -h {host} -p {pg_port} -U {user} creditgate_nope) or fix the name"
    )
    for database_url, line in cases.items():
        with pytest.raises(StartupError) as raised:
            await startup.check_database(database_url)
        assert str(raised.value) == line
    await startup.check_database(f"sqlite+aiosqlite:///{tmp_path}/fine.db")


def test_a_busy_port_is_found_before_serving() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError) as raised:
            startup.check_port("127.0.0.1", port)
    assert str(raised.value) == (
        f"--port {port}: 127.0.0.1:{port} is already in use — stop what listens there, or pick another port with --port"
    )
    startup.check_port("127.0.0.1", port)  # free again


def _uvicorn(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "uvicorn", "creditgate.main:create_app_from_env", "--factory"]
    args += ["--port", str(free_port())]
    return subprocess.run(
        args, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize("level", ["info", "debug"])
def test_plain_uvicorn_fails_with_the_one_line(tmp_path: Path, level: str) -> None:
    port = free_port()
    line = f"CREDITGATE_DATABASE_URL: cannot connect to 127.0.0.1:{port} (connection refused) — is Postgres running?"
    env = {
        "CREDITGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x",
        "CREDITGATE_LOG_LEVEL": level,
    }
    lifespan = _uvicorn(env, tmp_path)
    assert lifespan.returncode != 0
    assert line in lifespan.stderr
    assert ("Traceback" in lifespan.stderr) == (level == "debug")

    bad_setting = _uvicorn({"CREDITGATE_MARGIN": "abc", "CREDITGATE_LOG_LEVEL": level}, tmp_path)
    assert bad_setting.returncode == 2
    assert "CREDITGATE_MARGIN: input should be a valid decimal (got 'abc')" in bad_setting.stderr
    assert ("Traceback" in bad_setting.stderr) == (level == "debug")
