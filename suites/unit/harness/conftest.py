"""The harness's pytester runs see what a stranger's project has: not this repo's test-only plugins.

schemathesis's and Hypothesis's pytest plugins (and locust's, in a venv with the load group) load on every pytest
start-up and cost ~3 s of a pytester subprocess's ~4 s; a project testing its app with the harness has neither.
"""

from __future__ import annotations

import pytest

NOT_A_STRANGERS = "-p no:schemathesis -p no:hypothesispytest -p no:locust"


@pytest.fixture(autouse=True)
def _strangers_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # first: pytester unsets PYTEST_ADDOPTS when it starts
        monkeypatch.setenv("PYTEST_ADDOPTS", NOT_A_STRANGERS)
