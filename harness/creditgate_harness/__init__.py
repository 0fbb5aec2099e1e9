"""creditgate's test harness: a pytest plugin, service backends, vendor fakes and a ledger auditor.

The public API is what ``__all__`` lists; importing this package does not import pytest, so the fakes also
serve ``creditgate serve --demo`` and the load runner.
"""

from creditgate_harness.auditor import AuditReport, audit_url
from creditgate_harness.fakes.modes import Fake, InProcess, serve
from creditgate_harness.fakes.oidc import FakeOidcIssuer
from creditgate_harness.fakes.providers import FakeProvider, Fault, RecordedCall, Reply
from creditgate_harness.fakes.receiver import NotificationReceiver
from creditgate_harness.fakes.stripe import FakeStripe, StripeWebhooks, sign_payload
from creditgate_harness.oracle import (
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
from creditgate_harness.services import Service, ServiceUnavailable, start_postgres, start_redis
from creditgate_harness.services.base import free_port, run_sync
from creditgate_harness.wait import until

__all__ = [
    "AuditReport",
    "Books",
    "Fake",
    "FakeOidcIssuer",
    "FakeProvider",
    "FakeStripe",
    "Fault",
    "InProcess",
    "LiveServer",
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
    "StripeWebhooks",
    "ThreadedServer",
    "audit_url",
    "books_from_audit",
    "check_money",
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
