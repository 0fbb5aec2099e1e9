"""The LiteLLM proxy as a comparison point for bench.overhead: one worker, routed to the same fake upstream.

LiteLLM is no dependency of this project: it lives in its own venv (build/litellm-venv), made on first use with uv
(or venv + pip where no uv is found). If it cannot be installed or does not start, ``litellm_proxy`` prints one line
saying why and yields ``None``, so the rest of the bench goes on without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from creditgate_harness.servers import LiveServer
from creditgate_harness.services.base import free_port

# An exact pin, not only a lower bound: LiteLLM's PyPI releases were hijacked twice (1.82.7/1.82.8 in March 2026,
# 1.107.0 in October 2026), so a fresh install takes this reviewed version, never whatever is newest. 1.108.7 is the
# newest whose [proxy] extra resolves on PyPI (1.108.8+ needs litellm-enterprise/litellm-proxy builds not published).
# Bump it by hand; a venv holding another version is rebuilt.
VERSION = "1.108.7"
VENV = Path(__file__).resolve().parent.parent / "build" / "litellm-venv"
PYTHON = VENV / "bin" / "python"
MASTER_KEY = "sk-bench"  # the proxy checks it like any deployment's key; with no database it is a string compare
HEADERS = {"Authorization": f"Bearer {MASTER_KEY}"}

# The proxy's whole environment: nothing inherited but PATH and HOME, so no DATABASE_URL (LiteLLM would connect and
# migrate), provider key or other secret of this shell reaches it.
ENV = {
    # Use the model price map and Anthropic beta-header table bundled in the package instead of fetching them from
    # GitHub at import (litellm_core_utils/get_model_cost_map.py): no phoning home, no retries on an offline machine.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    # Usage telemetry (docs: proxy/telemetry, since 1.107.0) is off by default; this is its documented veto.
    "LITELLM_TELEMETRY_DISABLED": "true",
    # Errors only, which also sets uvicorn's level: no access log, as for the gateway (uvicorn --log-level warning).
    "LITELLM_LOG": "ERROR",
}


class LiteLLMUnavailable(Exception):
    """LiteLLM could not be installed or started; the message says why in one line."""


def _run(args: list[str], timeout: float) -> str:
    """Run an install step; a failure becomes ``LiteLLMUnavailable`` with the step's last line of output."""
    step = " ".join([Path(args[0]).name, *args[1:3]])  # "uv pip install", "python -m pip"
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LiteLLMUnavailable(f"{step}: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"]
        raise LiteLLMUnavailable(f"{step} failed: {lines[-1].strip()}")
    return done.stdout.strip()


def _installed_version() -> str | None:
    if not PYTHON.exists():
        return None
    try:
        return _run([str(PYTHON), "-c", "import importlib.metadata as m; print(m.version('litellm'))"], 60)
    except LiteLLMUnavailable:
        return None


def ensure_installed() -> str:
    """``litellm[proxy]==VERSION`` in its own venv, created or rebuilt only when missing or another version."""
    if _installed_version() == VERSION:
        return VERSION
    requirement = f"litellm[proxy]=={VERSION}"
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    print(f"LiteLLM: installing {requirement} into {VENV} (once)", flush=True)
    if uv:
        # --python: this interpreter, so uv never tries to download one.
        _run([uv, "venv", "-q", "--clear", "--python", sys.executable, str(VENV)], 120)
        _run([uv, "pip", "install", "-q", "--python", str(PYTHON), requirement], 900)
    else:
        _run([sys.executable, "-m", "venv", "--clear", str(VENV)], 120)
        _run([str(PYTHON), "-m", "pip", "install", "-q", requirement], 900)
    if (version := _installed_version()) != VERSION:
        raise LiteLLMUnavailable(f"installed, but the venv reports litellm {version}, not {VERSION}")
    return VERSION


def _config(upstream_url: str, model: str) -> dict[str, object]:
    """One deployment: ``model`` routed as an OpenAI-compatible model to the fake upstream; no database."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {"model": f"openai/{model}", "api_base": f"{upstream_url}/v1", "api_key": "dummy"},
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }


def start(upstream_url: str, model: str, *, timeout: float = 180) -> LiveServer:
    """``litellm --config … --num_workers 1`` on a free port; returns once /health/readiness is 200 and one
    completion for ``model`` went through (so a wrong route is reported here, not as a failed measurement)."""
    root = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
    # JSON is YAML: the config needs no YAML library on this side.
    (root / "config.yaml").write_text(json.dumps(_config(upstream_url, model), indent=2))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", str(root)), **ENV}
    server = LiveServer(f"http://127.0.0.1:{port}", root / "litellm.log", env)
    args = [str(VENV / "bin" / "litellm"), "--config", str(root / "config.yaml")]
    args += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    with server.log_path.open("wb") as log:
        server.process = subprocess.Popen(args, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if httpx.get(f"{server.url}/health/readiness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.process.poll() is not None:
                raise LiteLLMUnavailable(f"the proxy exited ({server.process.returncode}); see {server.log_path}")
            if time.monotonic() > deadline:
                raise LiteLLMUnavailable(f"no 200 on /health/readiness within {timeout:.0f}s; see {server.log_path}")
            time.sleep(0.2)
        body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
        try:
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=30)
        except httpx.HTTPError as exc:
            raise LiteLLMUnavailable(f"test completion: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise LiteLLMUnavailable(f"test completion answered {response.status_code}: {response.text[:200]}")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def litellm_proxy(upstream_url: str, model: str, *, skip: bool = False) -> Iterator[LiveServer | None]:
    """The proxy for the duration of the block, stopped afterwards; ``None`` (after one printed line) if unavailable
    or ``skip``."""
    if skip:
        print("LiteLLM: skipped (--no-compare)", flush=True)
        yield None
        return
    try:
        version = ensure_installed()
        server = start(upstream_url, model)
    except LiteLLMUnavailable as exc:
        print(f"LiteLLM: skipped ({exc})", flush=True)
        yield None
        return
    print(f"LiteLLM {version}: proxy at {server.url}, one worker, routed to {upstream_url}/v1", flush=True)
    try:
        yield server
    finally:
        server.stop()
