"""Postgres and Redis for tests, from whatever the machine has: external URL, Docker, or local binaries."""

from creditgate_harness.services.base import NotRestartable, Service, ServiceUnavailable
from creditgate_harness.services.postgres import start_postgres
from creditgate_harness.services.redis import start_redis

__all__ = ["NotRestartable", "Service", "ServiceUnavailable", "start_postgres", "start_redis"]
