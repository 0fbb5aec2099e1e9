"""The pytest11 entry point: options, ini keys, markers and the fixture modules.

Installed with ``pip install creditgate[harness]``; pytest loads it by itself. ``pytest --fixtures``
lists every public fixture with its one-line docstring.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from creditgate_harness.report import FlowReport
from creditgate_harness.services.base import BACKENDS

pytest_plugins = [
    "creditgate_harness.fixtures.services",
    "creditgate_harness.fixtures.database",
    "creditgate_harness.fixtures.gateway",
    "creditgate_harness.fixtures.factories",
    "creditgate_harness.fixtures.live_server",
    "creditgate_harness.fixtures.billing",
    "creditgate_harness.fixtures.integrations",
    "creditgate_harness.report",
]

MARKERS = {
    "critical": "money-path tests that must never be skipped in CI",
    "contract": "API contract tests (schemathesis, SDK clients)",
    "e2e": "end-to-end flows on real services and live servers",
    "smoke": "read-only checks against a deployed BASE_URL",
    "load": "load scenarios (run through nox -s load)",
    "slow": "tests that take more than a few seconds",
    "no_audit": "skip the ledger audit after this test (the test corrupts the ledger on purpose)",
}

DB_BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("creditgate-harness", "creditgate harness")
    group.addoption(
        "--harness-services",
        choices=BACKENDS,
        default=None,
        help="where Postgres/Redis come from: auto (default), external, docker or local (env HARNESS_SERVICES)",
    )
    group.addoption(
        "--harness-db",
        choices=DB_BACKENDS,
        default=None,
        help="database behind the database_url fixture unless a test picks one (default: sqlite)",
    )
    group.addoption(
        "--flow-report",
        metavar="PATH",
        default=None,
        help="write a Markdown report of the tests using the `flow` fixture (steps, pass/fail, balances)",
    )
    parser.addini("harness_services", "default for --harness-services", default="")
    parser.addini("harness_db", "default for --harness-db", default="sqlite")


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    db = config.getoption("harness_db") or config.getini("harness_db")
    if db not in DB_BACKENDS:
        raise pytest.UsageError(f"harness_db = {db!r}: set it to one of {', '.join(DB_BACKENDS)} in your ini file")
    report = config.getoption("flow_report")
    if report and not hasattr(config, "workerinput"):  # the xdist controller (or a plain run) writes it
        config.pluginmanager.register(FlowReport(Path(report)), "harness-flow-report")
    services = config.getini("harness_services")
    if services and services not in BACKENDS:
        raise pytest.UsageError(
            f"harness_services = {services!r}: set it to one of {', '.join(BACKENDS)} in your ini file"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in getattr(item, "_harness_live_servers", []):
            report.sections.append((f"live_server {server.url} log", server.read_log()))
    return report
