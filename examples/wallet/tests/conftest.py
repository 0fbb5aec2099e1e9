"""The app under test on this test's database (the harness builds it from ``harness_metadata``)."""

import pytest
from fastapi import FastAPI

from app.main import create_app


@pytest.fixture
def asgi_app(database_url: str) -> FastAPI:
    return create_app(database_url)
