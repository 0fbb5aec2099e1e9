"""Shared e2e fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as redis

from creditgate_harness.services import Service


@pytest.fixture
async def quota_redis(redis_service: Service) -> AsyncIterator[redis.Redis]:
    """The Redis the workers count quotas in (keys under this test's ``redis_prefix``)."""
    client = redis.Redis.from_url(redis_service.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def quota_key(redis_prefix: str) -> Callable[[str], str]:
    """This test's Redis key of ``subject``'s monthly quota counter (``quota_key("user:7")``)."""
    return lambda subject: f"{redis_prefix}quota:{subject}:{datetime.now(UTC):%Y%m}"
