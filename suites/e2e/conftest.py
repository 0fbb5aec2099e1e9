"""Shared e2e fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from creditgate_harness.services import Service


@pytest.fixture
async def quota_redis(redis_service: Service) -> AsyncIterator[redis.Redis]:
    """The Redis the workers count quotas in, emptied of quota counters first (user ids repeat across tests)."""
    client = redis.Redis.from_url(redis_service.url, decode_responses=True)
    async for key in client.scan_iter("quota:*"):
        await client.delete(key)
    yield client
    await client.aclose()
