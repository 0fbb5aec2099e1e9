"""Judge a finished locust run from its final files (pure functions; no locust import).

Two files, both written when locust exits: ``stats.json`` (locust's ``--json-file``: per endpoint, count,
failures and the response-time histogram) and ``statuses.json`` (the locustfile's listener: per endpoint, a
count per HTTP status, the exceptions the scenarios raised, the duration locust computes req/s over, and the names
of the paid scenarios — the adapter's).

402 (out of credits) and 429 (over quota) are business refusals: counted apart, never errors.
Errors are every other 4xx, every 5xx and requests without an answer (status 0).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("2xx", "402", "429", "4xx", "5xx", "other")
REFUSALS = ("402", "429")
ERRORS = ("4xx", "5xx", "other")
PAID = ("chat", "chat stream", "org chat")  # when statuses.json names none (a file from before adapters)


class NoResults(Exception):
    """locust wrote no final statistics: it did not run, or did not finish."""


def status_class(code: int) -> str:
    """``2xx``, ``402``, ``429``, ``4xx`` (any other), ``5xx``, or ``other`` (no answer, 1xx, 3xx)."""
    if 200 <= code < 300:
        return "2xx"
    if code in (402, 429):
        return str(code)
    if 400 <= code < 600:
        return f"{code // 100}xx"
    return "other"


def percentile(histogram: dict[int, int], count: int, fraction: float) -> int:
    """The response time (ms) ``fraction`` of requests finished within: locust's own calculation."""
    within = int(count * fraction)
    seen = 0
    for time in sorted(histogram, reverse=True):
        seen += histogram[time]
        if count - seen <= within:
            return time
    return 0


@dataclass(frozen=True)
class Endpoint:
    """One request name: locust's request and failure counts, and the statuses' count per class."""

    name: str
    requests: int
    failures: int
    classes: Counter[str]

    @property
    def errors(self) -> int:
        return sum(self.classes[c] for c in ERRORS)


@dataclass(frozen=True)
class Summary:
    """A whole run: its endpoints, the merged response-time histogram (ms: count), duration and exceptions."""

    endpoints: list[Endpoint]
    histogram: dict[int, int]
    duration_s: float
    exceptions: int
    paid_names: tuple[str, ...] = PAID

    @property
    def requests(self) -> int:
        return sum(e.requests for e in self.endpoints)

    @property
    def classes(self) -> Counter[str]:
        return sum((e.classes for e in self.endpoints), Counter())

    @property
    def errors(self) -> int:
        return sum(self.classes[c] for c in ERRORS)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def paid(self) -> int:
        return sum(e.classes["2xx"] for e in self.endpoints if e.name in self.paid_names)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def p(self, fraction: float) -> int:
        return percentile(self.histogram, self.requests, fraction)


def read_summary(stats_file: Path, statuses_file: Path) -> Summary:
    """The run's final figures; ``NoResults`` when either file is missing."""
    for path in (stats_file, statuses_file):
        if not path.is_file():
            raise NoResults(f"{path} is missing: locust did not run to the end")
    stats = json.loads(stats_file.read_text())
    statuses = json.loads(statuses_file.read_text())
    by_endpoint: dict[str, dict[str, int]] = statuses["statuses"]
    entries = {e["name"]: e for e in stats}
    histogram: Counter[int] = Counter()
    endpoints = []
    for name in sorted(entries.keys() | by_endpoint.keys()):
        entry = entries.get(name, {"num_requests": 0, "num_failures": 0, "response_times": {}})
        histogram.update({int(ms): n for ms, n in entry["response_times"].items()})
        classes = Counter[str]()
        for code, n in by_endpoint.get(name, {}).items():
            classes[status_class(int(code))] += n
        endpoints.append(Endpoint(name, entry["num_requests"], entry["num_failures"], classes))
    paid = tuple(statuses.get("paid") or PAID)
    return Summary(endpoints, dict(histogram), statuses["duration_s"], statuses["exceptions"], paid)


def problems(summary: Summary, *, max_error_rate: float, max_p95_ms: float) -> list[str]:
    """Why the run fails its gates (empty when it passes)."""
    found = []
    if summary.paid == 0:
        found.append(f"no paid requests: no 2xx answer on {', '.join(summary.paid_names)}")
    for e in summary.endpoints:
        counted = sum(e.classes.values())
        if (counted, e.errors) != (e.requests, e.failures):
            found.append(
                f"{e.name}: statuses count {counted} requests, {e.errors} errors; "
                f"locust counts {e.requests}, {e.failures} failures"
            )
    if summary.classes["5xx"]:
        found.append(f"{summary.classes['5xx']} responses were 5xx")
    if summary.exceptions:
        found.append(f"the scenarios raised {summary.exceptions} exceptions")
    if summary.error_rate > max_error_rate:
        found.append(f"error rate {summary.error_rate:.2%} > {max_error_rate:.2%}")
    if summary.p(0.95) > max_p95_ms:
        found.append(f"p95 {summary.p(0.95)} ms > {max_p95_ms:.0f} ms")
    return found


def table(summary: Summary) -> str:
    """Requests by endpoint and status class, then errors, latency and throughput."""
    row = "{:<12} {:>9}" + " {:>7}" * len(CLASSES)
    lines = [row.format("endpoint", "requests", *CLASSES)]
    for name, requests, classes in [
        *((e.name, e.requests, e.classes) for e in summary.endpoints),
        ("total", summary.requests, summary.classes),
    ]:
        lines.append(row.format(name, requests, *(classes[c] for c in CLASSES)))
    lines.append(
        f"paid (2xx {', '.join(summary.paid_names)}) {summary.paid}, "
        f"refused (402/429) {sum(summary.classes[c] for c in REFUSALS)}, "
        f"errors {summary.errors} ({summary.error_rate:.2%}), scenario exceptions {summary.exceptions}"
    )
    lines.append(
        f"p50 {summary.p(0.5)} ms, p95 {summary.p(0.95)} ms, p99 {summary.p(0.99)} ms, {summary.rps:.1f} req/s"
    )
    return "\n".join(lines)
