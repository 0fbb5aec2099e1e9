"""Smoke suite options: the deployment to check (``--base-url`` / ``BASE_URL``) and an optional key."""

from __future__ import annotations

import os

import httpx
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--base-url", default=None, help="the deployment to check (default: $BASE_URL)")


@pytest.fixture(scope="session")
def base_url(request: pytest.FixtureRequest) -> str:
    """The deployment under test; the suite is skipped without one."""
    url = request.config.getoption("--base-url") or os.environ.get("BASE_URL")
    if not url:
        pytest.skip("no deployment given: pass --base-url URL or set BASE_URL")
    return str(url).rstrip("/")


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
