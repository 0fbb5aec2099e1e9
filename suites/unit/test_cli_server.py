"""``creditgate serve --server``: uvicorn by default, granian selectable (bench.overhead measures both)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import httpx
import pytest

from creditgate.cli import server_command
from creditgate_harness.services.base import free_port
from suites.unit.test_cli import cli


def test_granian_missing_is_one_line_with_the_fix(tmp_path: Path) -> None:
    real = importlib.util.find_spec

    def without_granian(name: str, *args: object) -> object:
        return None if name == "granian" else real(name, *args)  # type: ignore[arg-type]

    with mock.patch.object(importlib.util, "find_spec", without_granian):
        ran = cli("serve", "--server", "granian", "--port", str(free_port()), cwd=tmp_path)
    assert ran.returncode == 2
    assert ran.stderr.strip() == (
        "creditgate: --server: granian is not installed — pip install 'creditgate[granian]', or drop --server granian"
    )


def test_an_unknown_server_is_refused_by_the_parser(tmp_path: Path) -> None:
    ran = cli("serve", "--server", "hypercorn", cwd=tmp_path)
    assert ran.returncode == 2
    assert "invalid choice: 'hypercorn'" in ran.stderr
    with pytest.raises(ValueError, match="one of uvicorn, granian"):
        server_command("hypercorn", host="127.0.0.1", port=1, workers=1)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("granian") is None, reason="granian is not installed")
def test_serve_demo_under_granian_answers_a_chat(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "creditgate.cli", "serve", "--demo", "--server", "granian", "--port", str(port)],
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
            assert line, "serve --demo --server granian exited before printing a key"
            key = line.strip() if line.strip().startswith("cg_") else ""
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["X-Creditgate-Credits-Charged"] == "0.10"
    finally:
        process.terminate()
        process.wait(15)
