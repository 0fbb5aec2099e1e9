"""creditgate's test harness: a pytest plugin, service backends, vendor fakes and a money oracle, for any ASGI app.

The public API is what ``__all__`` lists; importing this package does not import pytest, so the fakes can also
serve a demo or a load run. It imports no application code: the gateway's own layer (the ``cg_*`` fixtures, its
ledger auditor) lives in the gateway's distribution.
"""

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Fake": "creditgate_harness.fakes.modes",
    "FakeOidcIssuer": "creditgate_harness.fakes.oidc",
    "FakeProvider": "creditgate_harness.fakes.providers",
    "FakeProviderClient": "creditgate_harness.fakes.providers",
    "NotRestartable": "creditgate_harness.services",
    "Storm": "creditgate_harness.fakes.providers",
    "FakeStripe": "creditgate_harness.fakes.stripe",
    "Fault": "creditgate_harness.fakes.providers",
    "InProcess": "creditgate_harness.fakes.modes",
    "LiveServer": "creditgate_harness.servers",
    "NotificationReceiver": "creditgate_harness.fakes.receiver",
    "AccountBooks": "creditgate_harness.oracle",
    "Books": "creditgate_harness.oracle",
    "Gate": "creditgate_harness.concurrency",
    "LedgerCheck": "creditgate_harness.ledger",
    "LedgerError": "creditgate_harness.ledger",
    "Shot": "creditgate_harness.concurrency",
    "fire": "creditgate_harness.concurrency",
    "OracleReport": "creditgate_harness.oracle",
    "Outcome": "creditgate_harness.oracle",
    "Payment": "creditgate_harness.oracle",
    "Pricing": "creditgate_harness.oracle",
    "Served": "creditgate_harness.oracle",
    "books_from_audit": "creditgate_harness.oracle",
    "check_money": "creditgate_harness.oracle",
    "marker": "creditgate_harness.oracle",
    "RecordedCall": "creditgate_harness.fakes.providers",
    "Reply": "creditgate_harness.fakes.providers",
    "Service": "creditgate_harness.services",
    "ServiceUnavailable": "creditgate_harness.services",
    "StripeWebhooks": "creditgate_harness.fakes.stripe",
    "ThreadedServer": "creditgate_harness.servers",
    "free_port": "creditgate_harness.services.base",
    "run_sync": "creditgate_harness.services.base",
    "serve": "creditgate_harness.fakes.modes",
    "sign_payload": "creditgate_harness.fakes.stripe",
    "start_live_server": "creditgate_harness.servers",
    "start_postgres": "creditgate_harness.services",
    "start_redis": "creditgate_harness.services",
    "until": "creditgate_harness.wait",
}


def __getattr__(name: str) -> Any:
    """Import on first use (PEP 562): pytest loads this package as a plugin before coverage starts."""
    if name not in _WHERE:
        raise AttributeError(f"module 'creditgate_harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


if TYPE_CHECKING:
    from creditgate_harness.concurrency import Gate, Shot, fire
    from creditgate_harness.fakes.modes import Fake, InProcess, serve
    from creditgate_harness.fakes.oidc import FakeOidcIssuer
    from creditgate_harness.fakes.providers import FakeProvider, FakeProviderClient, Fault, RecordedCall, Reply, Storm
    from creditgate_harness.fakes.receiver import NotificationReceiver
    from creditgate_harness.fakes.stripe import FakeStripe, StripeWebhooks, sign_payload
    from creditgate_harness.ledger import LedgerCheck, LedgerError
    from creditgate_harness.oracle import (
        AccountBooks,
        Books,
        OracleReport,
        Outcome,
        Payment,
        Pricing,
        Served,
        books_from_audit,
        check_money,
        marker,
    )
    from creditgate_harness.servers import LiveServer, ThreadedServer, start_live_server
    from creditgate_harness.services import NotRestartable, Service, ServiceUnavailable, start_postgres, start_redis
    from creditgate_harness.services.base import free_port, run_sync
    from creditgate_harness.wait import until

__all__ = [
    "AccountBooks",
    "Books",
    "Fake",
    "FakeOidcIssuer",
    "FakeProvider",
    "FakeProviderClient",
    "FakeStripe",
    "Fault",
    "Gate",
    "InProcess",
    "LedgerCheck",
    "LedgerError",
    "LiveServer",
    "NotRestartable",
    "NotificationReceiver",
    "OracleReport",
    "Outcome",
    "Payment",
    "Pricing",
    "RecordedCall",
    "Reply",
    "Served",
    "Service",
    "ServiceUnavailable",
    "Shot",
    "Storm",
    "StripeWebhooks",
    "ThreadedServer",
    "books_from_audit",
    "check_money",
    "fire",
    "free_port",
    "marker",
    "run_sync",
    "serve",
    "sign_payload",
    "start_live_server",
    "start_postgres",
    "start_redis",
    "until",
]
