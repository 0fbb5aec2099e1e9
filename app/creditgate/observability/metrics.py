"""Prometheus metrics (prometheus-client), safe across several uvicorn workers.

Families (docs/operators.md, "Metrics", lists them with their labels):
``creditgate_requests_total``, ``creditgate_request_duration_seconds``, ``creditgate_upstream_requests_total``,
``creditgate_upstream_duration_seconds``, ``creditgate_credits_{held,charged,released}_total``,
``creditgate_open_holds``, ``creditgate_open_holds_credits``, ``creditgate_refusals_total``,
``creditgate_breaker_state``, ``creditgate_webhook_events_total``, ``creditgate_notification_deliveries_total``.

Several workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``creditgate serve --workers N`` sets it to a fresh
directory) every worker writes its samples there and any worker's ``/metrics`` shows the sum over all of them
(prometheus-client's multiprocess mode). Open holds are read from the database at scrape time, so they are
exact whichever worker answers.

Credits are counted when the transaction that moved them commits (a rollback counts nothing): ledger code
calls ``credits(session, held=…)`` and the amounts are applied by a SQLAlchemy ``after_commit`` hook. The
counters are floats, as Prometheus samples are; the ledger, not these, is the record of money.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from creditgate.observability import context

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the exposition, nothing an operator reads
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _require_multiprocess_dir() -> None:
    """prometheus-client opens files in this directory as the metrics below are created, at import: a missing one
    is a traceback from any entry point (even ``creditgate --help``). One line and exit 2, as every bad setting."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and not os.path.isdir(path):
        sys.stderr.write(f"creditgate: {MULTIPROC_ENV}: {path} is not a directory — create it (empty) or unset it\n")
        raise SystemExit(2)


_require_multiprocess_dir()
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REQUESTS = Counter("creditgate_requests", "HTTP requests answered", ["route", "method", "status", "model", "provider"])
REQUEST_SECONDS = Histogram(
    "creditgate_request_duration_seconds",
    "Time to answer a request (streams: to the last byte)",
    ["route"],
    buckets=BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "creditgate_upstream_requests", "Calls to providers, by answer status (or `error`)", ["provider", "status"]
)
UPSTREAM_SECONDS = Histogram(
    "creditgate_upstream_duration_seconds", "Time to a provider's response headers", ["provider"], buckets=BUCKETS
)
CREDITS_HELD = Counter("creditgate_credits_held", "Credits held before provider calls")
CREDITS_CHARGED = Counter("creditgate_credits_charged", "Credits charged when requests settled")
CREDITS_UNRECOVERED = Counter(
    "creditgate_credits_unrecovered",
    "Credits the upstream served beyond the hold that the balance could not pay (revenue lost; usage_records too)",
    ["model"],
)
CREDITS_RELEASED = Counter("creditgate_credits_released", "Credits given back from holds (failures, unused, expired)")
REFUSALS = Counter("creditgate_refusals", "Requests refused for credits (402) or quota (429)", ["status", "reason"])
BREAKER_STATE = Gauge(
    "creditgate_breaker_state",
    "Provider circuit: 0 closed, 1 half-open, 2 open (several workers: the worst worker's)",
    ["provider"],
    multiprocess_mode="livemax",
)
WEBHOOKS = Counter("creditgate_webhook_events", "Signed webhooks received", ["source", "type", "outcome"])
NOTIFICATIONS = Counter("creditgate_notification_deliveries", "Notification delivery attempts", ["type", "outcome"])

BREAKER_CODES = {"closed": 0, "half-opened": 1, "opened": 2}
_PENDING = "creditgate_metrics_credits"


# -- credits, counted at commit ------------------------------------------------------------------------------
def credits(
    session: AsyncSession,
    *,
    held: Decimal | None = None,
    charged: Decimal | None = None,
    released: Decimal | None = None,
) -> None:
    """Count credits this session's transaction moves, once it commits (nothing if it rolls back)."""
    session.info.setdefault(_PENDING, []).append((context.current(), held, charged, released))


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    for info, held, charged, released in session.info.pop(_PENDING, ()):
        _count(info, held, charged, released)


def committed(*, held: Decimal | None = None, charged: Decimal | None = None, released: Decimal | None = None) -> None:
    """Count credits a step already committed (the one-round-trip ledger on Postgres)."""
    _count(context.current(), held, charged, released)


def _count(info: Any, held: Decimal | None, charged: Decimal | None, released: Decimal | None) -> None:
    if held:
        CREDITS_HELD.inc(_sample(held))
    if charged:
        CREDITS_CHARGED.inc(_sample(charged))
        if info is not None:
            info.charged = (info.charged or Decimal(0)) + charged
    if released:
        CREDITS_RELEASED.inc(_sample(released))


def unrecovered(*, model: str, credits: Decimal) -> None:
    """Count credits a settle could not recover (served beyond the hold, the balance at zero)."""
    if credits > 0:
        CREDITS_UNRECOVERED.labels(model=model).inc(_sample(credits))


def _sample(credits: Decimal) -> float:
    """Prometheus samples are floats: the one place credits become one, for exposition only (never read back)."""
    return float(credits)


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


# -- the rest of the families --------------------------------------------------------------------------------
def webhook(source: str, type_: str, outcome: str) -> None:
    """A verified webhook and what it did (``outcome`` is reduced to its first word: ``credited``, ``duplicate``…)."""
    WEBHOOKS.labels(source, type_[:64], _slug(outcome)).inc()


def notification(type_: str, outcome: str) -> None:
    """A notification delivery attempt: ``delivered`` or ``failed``."""
    NOTIFICATIONS.labels(type_, outcome).inc()


def breaker_changed(provider: str, state: str) -> None:
    BREAKER_STATE.labels(provider).set(BREAKER_CODES.get(state, 2))


def _slug(outcome: str) -> str:
    word = outcome.split(" ", 1)[0].strip(";,.():").lower()
    return word or "unknown"


# -- exposition ----------------------------------------------------------------------------------------------
class _Snapshot(Collector):
    """Gauges read at scrape time (open holds), exposed as they were read."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


def open_holds_families(count: int, amount: Decimal) -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily("creditgate_open_holds", "Holds not yet settled or released", value=count),
        GaugeMetricFamily("creditgate_open_holds_credits", "Credits in open holds", value=_sample(amount)),
    ]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(scrape_time: list[GaugeMetricFamily]) -> bytes:
    """The text exposition: this process's (or every worker's) samples plus the scrape-time gauges."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Snapshot(scrape_time))
    return body + generate_latest(extra)


def worker_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (multiprocess mode)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
