"""suites/smoke without a deployment: a usage error, never a green run of skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
NOT_IN_A_DEPLOY_PIPELINE = ("creditgate_harness", "creditgate", "schemathesis", "hypothesispytest", "locust", "xdist")


def run_pytest(*args: str) -> subprocess.CompletedProcess[str]:
    """pytest in the repo root, as a deploy pipeline runs it: no BASE_URL, none of the test venv's plugins (the
    pipeline's venv holds pytest and httpx alone; schemathesis's and Hypothesis's plugins cost seconds a start)."""
    env = {key: value for key, value in os.environ.items() if key != "BASE_URL"}
    plugins = [f"-pno:{name}" for name in NOT_IN_A_DEPLOY_PIPELINE]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugins, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_smoke_without_a_url_is_a_usage_error() -> None:
    result = run_pytest("suites/smoke")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "set BASE_URL or pass --base-url URL" in result.stderr


def test_smoke_tests_picked_by_marker_from_a_wider_run_still_need_a_url() -> None:
    result = run_pytest("-m", "smoke", "suites/smoke", __file__)
    assert result.returncode == 4, result.stdout + result.stderr


def test_a_run_mixing_suites_is_not_stopped_by_the_smoke_suite() -> None:
    result = run_pytest("--collect-only", "-q", "suites/smoke", __file__)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "suites/smoke/test_deployment.py::test_index_names_the_service" in result.stdout
