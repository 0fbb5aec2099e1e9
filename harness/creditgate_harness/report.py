"""A human report of end-to-end flows: flow → steps → pass/fail, balances before and after.

A test asks for the ``cg_flow`` fixture and wraps what it does in steps::

    async def test_top_up(cg_flow: Flow) -> None:
        with cg_flow.step("buy 500 credits through Stripe checkout"):
            ...
        cg_flow.balance("alice", before="0.00", after="500.00")

``pytest --flow-report=reports/e2e.md`` writes the report (Markdown) at the end of the session.
Steps and balances travel in each test report's ``user_properties``, so the report is complete under
xdist too, and they also appear as ``<property>`` elements in pytest's JUnit XML.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

STEP, BALANCE, DOC = "flow_step", "flow_balance", "flow_doc"


@dataclass
class Flow:
    """Records the steps of one test; a step that raises is recorded as failed and re-raises."""

    node: pytest.Item

    @classmethod
    def for_item(cls, request: pytest.FixtureRequest) -> Flow:
        """The flow of the requesting test; its docstring becomes the flow's description."""
        assert isinstance(request.node, pytest.Item)
        doc = (request.function.__doc__ or "").strip()
        request.node.user_properties.append((DOC, " ".join(doc.split())))
        return cls(request.node)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self._record(
                STEP, {"name": name, "ok": False, "seconds": time.perf_counter() - started, "error": repr(exc)}
            )
            raise
        self._record(STEP, {"name": name, "ok": True, "seconds": time.perf_counter() - started})

    def balance(self, who: str, *, before: str, after: str) -> None:
        """Note a balance change the flow caused (shown in the report's balance table)."""
        self._record(BALANCE, {"who": who, "before": before, "after": after})

    def _record(self, kind: str, value: dict[str, Any]) -> None:
        self.node.user_properties.append((kind, value))


@dataclass
class _Entry:
    title: str
    doc: str
    outcome: str = "passed"
    steps: list[dict[str, Any]] = field(default_factory=list)
    balances: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class FlowReport:
    """Collects flow tests' reports (on the xdist controller too) and writes the Markdown file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, _Entry] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = report.user_properties
        if not any(k in (STEP, BALANCE, DOC) for k, _ in props):
            return
        steps: list[dict[str, Any]] = [cast(dict[str, Any], v) for k, v in props if k == STEP]
        balances: list[dict[str, Any]] = [cast(dict[str, Any], v) for k, v in props if k == BALANCE]
        doc = next((v for k, v in props if k == DOC), "")
        entry = self.entries.setdefault(report.nodeid, _Entry(report.nodeid, str(doc)))
        entry.steps, entry.balances = steps or entry.steps, balances or entry.balances
        entry.seconds += report.duration
        if report.failed:
            entry.outcome = "failed" if report.when == "call" else f"error in {report.when}"
        elif report.skipped and entry.outcome == "passed":
            entry.outcome = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(render(list(self.entries.values())))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.entries:
            terminalreporter.write_line(f"flow report: {self.path}")


def render(entries: list[_Entry]) -> str:
    passed = sum(e.outcome == "passed" for e in entries)
    lines = [f"# End-to-end flows: {passed} of {len(entries)} passed", ""]
    for e in entries:
        mark = "PASS" if e.outcome == "passed" else e.outcome.upper()
        lines += [f"## {mark} — `{e.title}` ({e.seconds:.1f} s)", ""]
        if e.doc:
            lines += [e.doc, ""]
        if e.steps:
            lines += ["| # | step | result | seconds |", "|---|---|---|---|"]
            for i, s in enumerate(e.steps, 1):
                result = "pass" if s["ok"] else f"FAIL: {_cell(s.get('error', ''))}"
                lines.append(f"| {i} | {_cell(s['name'])} | {result} | {s['seconds']:.2f} |")
            lines.append("")
        if e.balances:
            lines += ["| balance | before | after |", "|---|---|---|"]
            lines += [f"| {_cell(b['who'])} | {b['before']} | {b['after']} |" for b in e.balances]
            lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")
