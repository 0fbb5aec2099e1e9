"""The harness's pytester runs see what a stranger's project has: not this repo's test-only plugins.

schemathesis's and Hypothesis's pytest plugins (and locust's, in a venv with the load group) load on every pytest
start-up and cost ~3 s of a pytester subprocess's ~4 s; a project testing its app with the harness has neither.
The runs are in-process (pytester restores sys.modules and the plugin manager after each): a subprocess paid the
interpreter, the imports and coverage's start-up again, ~60 s of test_plugin.py's ~67 s. Each inner run's ini gets
pytest-asyncio's loop scope, as a stranger's does (the README's snippet sets it).
"""

from __future__ import annotations

import pytest

NOT_A_STRANGERS = " ".join(
    ("-p no:schemathesis", "-p no:hypothesispytest", "-p no:locust", "-o asyncio_default_fixture_loop_scope=function")
)


@pytest.fixture(autouse=True)
def _strangers_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # first: pytester unsets PYTEST_ADDOPTS when it starts
        monkeypatch.setenv("PYTEST_ADDOPTS", NOT_A_STRANGERS)
