"""Smoke suite options: the deployment to check (``--base-url`` / ``BASE_URL``) and an optional key.

A run that selects only smoke tests and names no deployment is a usage error, never a green run of skips.
In a run mixing other suites (``pytest suites``), the smoke tests skip instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
SMOKE_ONLY = pytest.StashKey[bool]()
NO_URL = "the smoke suite needs a deployment: set BASE_URL or pass --base-url URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--base-url", default=None, help="the deployment to check (default: $BASE_URL)")


def deployment_url(config: pytest.Config) -> str | None:
    """``--base-url`` or ``BASE_URL``, without a trailing slash; None when neither is given."""
    url = config.getoption("--base-url") or os.environ.get("BASE_URL")
    return str(url).rstrip("/") if url else None


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if items and deployment_url(config) is None and all(item.path.is_relative_to(HERE) for item in items):
        if not hasattr(config, "workerinput"):
            raise pytest.UsageError(NO_URL)
        config.stash[SMOKE_ONLY] = True  # an xdist worker cannot stop the run: its tests fail instead


@pytest.fixture(scope="session")
def base_url(request: pytest.FixtureRequest) -> str:
    """The deployment under test; without one, an error under xdist, or a skip in a run mixing other suites."""
    url = deployment_url(request.config)
    if url is None:
        if request.config.stash.get(SMOKE_ONLY, False):
            pytest.fail(NO_URL, pytrace=False)
        pytest.skip(NO_URL)
    return url


@pytest.fixture(scope="session")
def smoke_client(base_url: str) -> httpx.Client:
    """A plain HTTP client for the deployment (10 s timeout)."""
    return httpx.Client(base_url=base_url, timeout=10)


@pytest.fixture(scope="session")
def smoke_key() -> str:
    """``SMOKE_API_KEY``; tests that need it skip without it."""
    key = os.environ.get("SMOKE_API_KEY")
    if not key:
        pytest.skip("SMOKE_API_KEY is not set")
    return key
