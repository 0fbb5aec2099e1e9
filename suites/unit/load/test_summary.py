"""creditgate_harness/load/summary.py: the figures and the gates of a load run, from small locust-shaped files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from creditgate_harness.load.summary import (
    ERRORS,
    NoResults,
    Summary,
    percentile,
    problems,
    read_summary,
    status_class,
    table,
)

LIMITS = {"max_error_rate": 0.0, "max_p95_ms": 2000.0}


def summary_of(
    tmp_path: Path, statuses: dict[str, dict[int, int]], *, exceptions: int = 0, ms: int = 50, **locust: int
) -> Summary:
    """A run whose locust stats agree with ``statuses`` (``locust``: override an endpoint's request count)."""
    stats = [
        {
            "name": name,
            "method": "POST",
            "num_requests": locust.get(name.replace(" ", "_"), sum(codes.values())),
            "num_failures": sum(n for code, n in codes.items() if status_class(code) in ERRORS),
            "response_times": {str(ms): sum(codes.values())},
        }
        for name, codes in statuses.items()
    ]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    (tmp_path / "statuses.json").write_text(
        json.dumps({"statuses": statuses, "exceptions": exceptions, "duration_s": 10.0})
    )
    return read_summary(tmp_path / "stats.json", tmp_path / "statuses.json")


@pytest.mark.parametrize(
    ("code", "expected"),
    [(200, "2xx"), (204, "2xx"), (402, "402"), (429, "429"), (401, "4xx"), (500, "5xx"), (503, "5xx"), (0, "other")],
)
def test_status_classes(code: int, expected: str) -> None:
    assert status_class(code) == expected


def test_counts_by_endpoint_and_status_class(tmp_path: Path) -> None:
    summary = summary_of(
        tmp_path, {"chat": {200: 3, 402: 1, 429: 1}, "org chat": {404: 1, 0: 1}, "webhook": {200: 2, 500: 1}}
    )
    assert [(e.name, e.requests) for e in summary.endpoints] == [("chat", 5), ("org chat", 2), ("webhook", 3)]
    assert summary.classes == Counter({"2xx": 5, "402": 1, "429": 1, "4xx": 1, "5xx": 1, "other": 1})
    assert (summary.requests, summary.paid, summary.errors, summary.rps) == (10, 3, 3, 1.0)
    lines = table(summary).splitlines()
    assert lines[0].split() == ["endpoint", "requests", "2xx", "402", "429", "4xx", "5xx", "other"]
    assert lines[4].split() == ["total", "10", "5", "1", "1", "1", "1", "1"]


def test_percentiles_match_locusts() -> None:
    """Figures locust's calculate_response_time_percentile gives for this histogram."""
    histogram = {12: 40, 30: 30, 75: 20, 180: 8, 900: 2}
    assert [percentile(histogram, 100, p) for p in (0.5, 0.95, 0.99)] == [30, 180, 900]


def test_refusals_are_not_errors(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {200: 1, 402: 5}, "org chat": {429: 5}})
    assert summary.error_rate == 0
    assert problems(summary, **LIMITS) == []


def test_zero_paid_requests_fail(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {402: 10}, "webhook": {200: 5}})
    assert problems(summary, **LIMITS) == ["no paid requests: no 2xx answer on chat, chat stream, org chat"]


def test_no_requests_at_all_fail(tmp_path: Path) -> None:
    assert problems(summary_of(tmp_path, {}), **LIMITS) == [
        "no paid requests: no 2xx answer on chat, chat stream, org chat"
    ]


def test_any_5xx_fails_whatever_the_error_budget(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {200: 999, 502: 1}})
    assert problems(summary, max_error_rate=0.5, max_p95_ms=2000) == ["1 responses were 5xx"]


def test_error_rate_and_p95_over_their_thresholds_fail(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {200: 9, 401: 1}}, ms=2500)
    assert problems(summary, **LIMITS) == ["error rate 10.00% > 0.00%", "p95 2500 ms > 2000 ms"]


def test_status_counts_disagreeing_with_locust_fail(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {200: 4}}, chat=5)
    assert problems(summary, **LIMITS) == ["chat: statuses count 4 requests, 0 errors; locust counts 5, 0 failures"]


def test_exceptions_in_the_scenarios_fail(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, {"chat": {200: 4}}, exceptions=2)
    assert problems(summary, **LIMITS) == ["the scenarios raised 2 exceptions"]


@pytest.mark.parametrize("missing", ["stats.json", "statuses.json"])
def test_a_missing_file_means_locust_did_not_finish(tmp_path: Path, missing: str) -> None:
    summary_of(tmp_path, {"chat": {200: 1}})
    (tmp_path / missing).unlink()
    with pytest.raises(NoResults, match=f"{missing} is missing"):
        read_summary(tmp_path / "stats.json", tmp_path / "statuses.json")
