"""The schemathesis case count, summed over xdist workers (a plugin loaded by the root conftest).

Each worker counts the cases it ran and how many schema operations it collected; it hands them to the
controller through ``workeroutput`` (xdist's channel, as pytest-cov uses it). The controller judges the
total when the session ends, so the gate holds whichever worker ran which operation, and it is judged
only when every schema operation was selected and passed (a ``-k`` run or a failure speaks for itself).
"""

from __future__ import annotations

import pytest

MIN_SCHEMA_CASES = 1000
_SCHEMA_TEST = "test_api_conforms_to_its_schema"
_counts = {"cases": 0, "ran": 0, "collected": 0}


def count_schema_case() -> None:
    _counts["cases"] += 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _counts["collected"] = sum(1 for item in items if item.name.startswith(_SCHEMA_TEST))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and _SCHEMA_TEST in report.nodeid:
        _counts["ran"] += 1


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without xdist
def pytest_testnodedown(node: object) -> None:  # controller side, once per worker
    output = getattr(node, "workeroutput", {})
    _counts["cases"] += output.get("schema_cases", 0)
    _counts["collected"] = max(_counts["collected"], output.get("schema_collected", 0))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report, the controller judges
        workeroutput["schema_cases"] = _counts["cases"]
        workeroutput["schema_collected"] = _counts["collected"]
        return
    # The controller sees every worker's reports, so "ran" is already the total over workers.
    if not _counts["collected"] or _counts["ran"] < _counts["collected"]:
        return  # some operations deselected or failed: their own failures say so
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"schemathesis ran {_counts['cases']} cases over {_counts['ran']} operations (minimum {MIN_SCHEMA_CASES})"
    if reporter is not None:
        reporter.write_sep("-", line)
    if _counts["cases"] < MIN_SCHEMA_CASES:
        if reporter is not None:
            reporter.write_line(f"FAILED: too few schemathesis cases: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
