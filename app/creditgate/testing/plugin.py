"""creditgate's own pytest plugin (pytest11 entry point ``creditgate``): the gateway layer of the test harness.

The generic harness (``creditgate_harness``, its own distribution) knows nothing of the gateway. This plugin adds
the ini key ``creditgate_fixtures``; set to true (this repository does), it loads ``creditgate.testing.gateway``:
the ``cg_*`` fixtures, the gateway as ``asgi_app``, its migrations as ``database_setup`` and the ledger auditor as
``database_check``.

This module imports nothing but pytest: the fixture module loads in ``pytest_configure``, after pytest-cov has
started, so ``pytest --cov`` measures it (and the gateway code it imports) from its first line.
"""

from __future__ import annotations

import importlib.util

import pytest

GATEWAY_FIXTURES = "creditgate.testing.gateway"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "creditgate_fixtures", "load the creditgate gateway layer (cg_* fixtures)", type="bool", default=False
    )


@pytest.hookimpl(trylast=True)  # after the harness's pytest_configure: the gateway's fixtures override its generic ones
def pytest_configure(config: pytest.Config) -> None:
    if not config.getini("creditgate_fixtures"):
        return
    if importlib.util.find_spec("creditgate_harness") is None:
        raise pytest.UsageError(
            "creditgate_fixtures = true needs the test harness: pip install -e ./harness -e '.[harness]' "
            "(uv: uv pip install -e '.[harness]')"
        )
    config.addinivalue_line("markers", "no_audit: skip the ledger audit after this test")
    config.pluginmanager.import_plugin(GATEWAY_FIXTURES)
