"""Postgres and Redis for tests, from whatever the machine has: external URL, Docker, or local binaries."""

from harness.services.base import Service, ServiceUnavailable
from harness.services.postgres import start_postgres
from harness.services.redis import start_redis

__all__ = ["Service", "ServiceUnavailable", "start_postgres", "start_redis"]
