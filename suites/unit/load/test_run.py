"""suites/load/run.py: no locust, or no final figures from it, is a failed run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from creditgate_harness.auditor import AuditReport, Violation
from suites.load import run

ARGS = argparse.Namespace(max_error_rate=0.0, max_p95_ms=2000.0)


def test_locust_missing_fails_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "locust", None)  # what find_spec sees when locust is not installed
    monkeypatch.setattr(run, "start_postgres", lambda *_: pytest.fail("services started without locust"))
    assert run.main(["--users", "1", "--time", "1s"]) == 1
    assert "load: FAILED: locust is not installed" in capsys.readouterr().out


def test_locust_that_did_not_run_fails(tmp_path: Path) -> None:
    assert run.judge(tmp_path, locust_exit=1, audit=AuditReport(), args=ARGS) == [
        "locust exited 1",
        f"{tmp_path / 'stats.json'} is missing: locust did not run to the end",
    ]


def test_an_audit_violation_fails(tmp_path: Path) -> None:
    audit = AuditReport(violations=[Violation("balance", "account 1", "off by 0.01")])
    assert "ledger audit failed" in run.judge(tmp_path, locust_exit=0, audit=audit, args=ARGS)
