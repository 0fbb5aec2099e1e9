"""The pytest11 entry point: options, ini keys and the generic fixtures any project gets.

Installed with ``pip install creditgate-harness`` (``./harness`` in the creditgate repository); pytest loads it by
itself. It knows no application: a project names its app and schema in its ini file, or overrides the fixtures
(``asgi_app``, ``database_setup``, ``database_check``) from a conftest or a plugin of its own.

This module imports nothing of the harness: the fixture modules load in ``pytest_configure``, after pytest-cov has
started, so ``pytest --cov`` measures them (and the code they import) from their first line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

FIXTURE_MODULES = (
    "creditgate_harness.fixtures.services",
    "creditgate_harness.fixtures.database",
    "creditgate_harness.fixtures.asgi",
    "creditgate_harness.fixtures.fakes",
)
BACKENDS = ("auto", "external", "docker", "local")  # creditgate_harness.services.base checks the same names
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
        help="write a Markdown report of the flows tests record (creditgate_harness.report.Flow: steps, balances)",
    )
    parser.addini("harness_services", "default for --harness-services", default="")
    parser.addini("harness_db", "default for --harness-db", default="sqlite")
    parser.addini("asgi_app", 'the ASGI app async_client and live_server run: "pkg.module:app" or "pkg:factory()"')
    parser.addini("harness_metadata", 'database_url schema: SQLAlchemy metadata, "pkg.models:Base.metadata"')
    parser.addini("harness_alembic_ini", "database_url schema: an alembic.ini to upgrade to head")
    parser.addini(
        "harness_env",
        "env variables your app reads, set for asgi_app and every live server: NAME={database_url}, "
        "{redis_url}, {redis_prefix} or a fake's {OPENAI_BASE_URL}…",
        type="linelist",
    )


def pytest_configure(config: pytest.Config) -> None:
    from creditgate_harness.fixtures.services import in_ci
    from creditgate_harness.report import FlowReport

    for module in FIXTURE_MODULES:
        config.pluginmanager.import_plugin(module)
    # fake_stripe switches the stripe SDK to its httpx client, which posts raw bytes with data= (stripe's, not yours).
    config.addinivalue_line("filterwarnings", "ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
    db = config.getoption("harness_db") or config.getini("harness_db")
    if db not in DB_BACKENDS:
        raise pytest.UsageError(f"harness_db = {db!r}: set it to one of {', '.join(DB_BACKENDS)} in your ini file")
    services = config.getini("harness_services")
    if services and services not in BACKENDS:
        raise pytest.UsageError(
            f"harness_services = {services!r}: set it to one of {', '.join(BACKENDS)} in your ini file"
        )
    controller = not hasattr(config, "workerinput")  # the xdist controller, or a plain run
    report = config.getoption("flow_report")
    if report and controller:
        config.pluginmanager.register(FlowReport(Path(report)), "harness-flow-report")
    if controller and in_ci():
        config.pluginmanager.register(NothingChecked(), "harness-nothing-checked")


class NothingChecked:
    """Under CI=true, a run whose every test was skipped fails: it checked nothing."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] += 1

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.outcomes["skipped"] and not (self.outcomes["passed"] or self.outcomes["failed"]):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.outcomes["skipped"] and not (self.outcomes["passed"] or self.outcomes["failed"]):
            terminalreporter.write_line(
                f"CI=true: all {self.outcomes['skipped']} tests were skipped, so nothing was checked (see the reasons)",
                red=True,
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
