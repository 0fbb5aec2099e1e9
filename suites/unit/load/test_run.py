"""The load runner (creditgate_harness/load/runner.py, and creditgate's suites/load/run.py on it): no locust, or no
final figures from it, is a failed run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from creditgate.testing.auditor import AuditReport, Violation
from creditgate_harness.load import runner
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
    assert runner.judge(tmp_path, locust_exit=1, audit=AuditReport(), args=ARGS) == [
        "locust exited 1",
        f"{tmp_path / 'stats.json'} is missing: locust did not run to the end",
    ]


def test_an_audit_violation_fails(tmp_path: Path) -> None:
    audit = AuditReport(violations=[Violation("balance", "account 1", "off by 0.01")])
    assert "ledger audit failed" in runner.judge(tmp_path, locust_exit=0, audit=audit, args=ARGS)


def test_run_time_syntax() -> None:
    assert [runner.seconds(v) for v in ("30s", "2m", "1h30m", "90")] == [30, 120, 5400, 90]
    with pytest.raises(argparse.ArgumentTypeError):
        runner.seconds("2 minutes")


def test_a_run_that_could_not_be_audited_or_whose_oracle_failed_fails(tmp_path: Path) -> None:
    from decimal import Decimal

    from creditgate_harness.oracle import Books, OracleReport
    from creditgate_harness.oracle import Violation as MoneyViolation

    assert "the ledger could not be audited" in runner.judge(tmp_path, locust_exit=0, audit=None, args=ARGS)
    wrong = OracleReport(violations=[MoneyViolation("7", "charges", "the ledger charged 2.20; served 1.10")])
    assert "the money oracle found the books wrong" in runner.judge(
        tmp_path, locust_exit=0, audit=AuditReport(), args=ARGS, oracle=wrong
    )
    empty = OracleReport()  # nothing checked is not a pass
    assert "the money oracle was inconclusive" in runner.judge(
        tmp_path, locust_exit=0, audit=AuditReport(), args=ARGS, oracle=empty
    )
    assert Books("1", initial=Decimal(1), final=Decimal(1), purchases=Decimal(0), charges=Decimal(0))


def test_the_report_says_whether_the_generator_was_the_limit() -> None:
    ceilings = [runner.Ceiling(1, 400.0), runner.Ceiling(2, 700.0)]
    assert "the app was the limit" in runner.ceiling_lines(ceilings, achieved=100.0, processes=1)[-1]
    assert "GENERATOR may have been the limit" in runner.ceiling_lines(ceilings, achieved=350.0, processes=1)[-1]
    assert "NOT MEASURED" in runner.ceiling_lines([], achieved=100.0, processes=1)[0]
    assert "2 process(es) NO FIGURES" in runner.ceiling_lines([runner.Ceiling(2, None)], achieved=None, processes=2)[0]


def test_client_records_become_oracle_outcomes() -> None:
    rows = [
        {"name": "chat", "rid": "a", "account": 3, "status": 200, "stream": False, "complete": True},
        {"name": "chat stream", "rid": "b", "account": 3, "status": 0, "stream": True, "complete": False},
        {"name": "checkout", "account": 3, "status": 200},  # not a chat: no rid, not an oracle outcome
    ]
    outcomes = runner.outcomes_from(rows)
    assert [(o.rid, o.account, o.definite) for o in outcomes] == [("a", "3", True), ("b", "3", False)]


def test_the_chaos_runners_keys_file_becomes_the_plan_of_creditgates_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """suites/chaos/run.py starts locust with a ``Provisioned.keys_file()`` (LOAD_KEYS_FILE), as before adapters."""
    keys = tmp_path / "all-keys.json"
    keys.write_text('{"users": [{"key": "k1", "account": 5}], "org_members": [{"key": "k2", "account": 9}]}')
    seen: dict[str, object] = {}
    monkeypatch.setattr(runner, "start_locust", lambda out, **kw: seen.update(kw) or ("run", "process"))
    env = {"LOAD_KEYS_FILE": str(keys), "LOAD_STOP_FILE": "stop"}
    assert run.start_locust(tmp_path, host="http://gw", users=2, duration=600, env=env) == ("run", "process")
    assert seen["adapter"] == "suites.load.adapter:Creditgate"
    assert seen["env"] == {"LOAD_STOP_FILE": "stop", "LOAD_WEBHOOK_SECRET": "whsec_load"}
    plan = json.loads(Path(str(seen["plan"])).read_text())
    assert plan["clients"] == [
        {"account": "5", "headers": {"Authorization": "Bearer k1"}, "shared": False},
        {"account": "9", "headers": {"Authorization": "Bearer k2"}, "shared": True},
    ]
