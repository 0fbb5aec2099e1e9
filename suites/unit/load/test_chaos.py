"""suites/chaos/run.py: errors inside and outside the fault window, recovery, and the verdict's gates."""

from __future__ import annotations

from pathlib import Path

from suites.chaos import run as chaos
from suites.load.provision import Provisioned
from suites.load.run import LocustRun


def rows(start: float, end: float, *, status: int = 200, rate: int = 10) -> list[dict[str, object]]:
    steps = int((end - start) * rate)
    return [
        {"name": "chat", "rid": f"r{start}{i}", "status": status, "t0": start + i / rate, "t1": start + i / rate + 0.01}
        for i in range(steps)
    ]


WINDOW = chaos.Window(start=100.0, end=103.0, baseline=95.0, stop=108.0)


def test_errors_are_counted_inside_and_outside_the_window() -> None:
    found = chaos.figures(
        rows(95, 100) + rows(100, 103, status=503) + rows(103, 108) + rows(106, 106.2, status=500), WINDOW, margin=0.5
    )
    assert (found["errors_inside"], found["errors_outside"]) == (30, 2)
    assert found["baseline_rps"] == found["post_rps"] == 10.0  # 2xx chat answers per second
    assert found["recovery_s"] == 0.0


def test_throughput_that_does_not_come_back_is_reported() -> None:
    found = chaos.figures(rows(95, 100) + rows(103, 108, rate=2), WINDOW, margin=0.5)
    assert found["recovery_s"] is None
    scenario = chaos.Scenario("x", "run", Provisioned("run"), {}, LocustRun(Path(), "", 0), WINDOW)
    scenario.rows = rows(95, 100) + rows(103, 108, rate=2)
    chaos.judge(scenario, margin=0.5)
    assert "throughput never came back within the margin" in scenario.problems
    assert "money oracle: did not run" in scenario.problems  # no oracle is never a pass


def test_a_scenario_with_no_traffic_fails() -> None:
    scenario = chaos.Scenario("x", "run", Provisioned("run"), {}, LocustRun(Path(), "", 0), WINDOW)
    chaos.judge(scenario, margin=0.5)
    assert "no paid request: nothing was tested" in scenario.problems
