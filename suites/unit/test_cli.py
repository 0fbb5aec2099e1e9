"""app/cli.py: migrate, create-key, and `serve --demo` end to end in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from creditgate_harness.auditor import audit_url
from creditgate_harness.services.base import free_port


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "creditgate.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_migrate_and_create_key(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {"CREDITGATE_DATABASE_URL": url}
    assert cli("migrate", cwd=tmp_path, env=env).returncode == 0
    first = cli("create-key", "--email", "a@example.test", "--credits", "12.50", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"cg_[\w-]{43}\n", first.stdout)
    second = cli("create-key", "--email", "a@example.test", "--credits", "99", cwd=tmp_path, env=env)
    assert second.stdout != first.stdout  # a second key for the same user, no second grant
    bad = cli("create-key", "--email", "b@example.test", "--credits", "1.001", cwd=tmp_path, env=env)
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
