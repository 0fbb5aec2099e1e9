"""harness/services: every backend, chosen and forced; local ones start from nothing as root."""

from __future__ import annotations

import os

import pytest

from creditgate_harness.services import ServiceUnavailable, start_postgres, start_redis
from creditgate_harness.services.base import chosen_backend


@pytest.mark.slow
def test_local_postgres_and_redis_start_and_stop() -> None:
    postgres = start_postgres("local")
    redis = start_redis("local")
    try:
        assert postgres.backend == "local"
        assert postgres.version[:2].isdigit()
        assert redis.backend == "local"
        assert redis.version.startswith(("6", "7", "8"))
    finally:
        postgres.stop()
        redis.stop()
    from creditgate_harness.services.postgres import server_version

    with pytest.raises(ServiceUnavailable):
        server_version(postgres.url)


def test_docker_backend_skips_cleanly_without_an_engine() -> None:
    from creditgate_harness.services.base import docker_engine_answers

    reason = docker_engine_answers()
    if reason is None:
        pytest.skip("a Docker engine is available here")
    with pytest.raises(ServiceUnavailable, match="docker: "):
        start_postgres("docker")
    with pytest.raises(ServiceUnavailable, match="docker: "):
        start_redis("docker")


def test_external_needs_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_POSTGRES_URL", raising=False)
    monkeypatch.delenv("HARNESS_REDIS_URL", raising=False)
    with pytest.raises(ServiceUnavailable, match="HARNESS_POSTGRES_URL is not set"):
        start_postgres("external")
    with pytest.raises(ServiceUnavailable, match="HARNESS_REDIS_URL is not set"):
        start_redis("external")
    monkeypatch.setenv("HARNESS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(ServiceUnavailable, match="cannot connect"):
        start_postgres("external")


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_SERVICES", "local")
    assert chosen_backend(None) == "local"
    assert chosen_backend("external") == "external"
    with pytest.raises(ValueError, match="choose one of"):
        chosen_backend("kubernetes")


def test_session_services_report_their_backend(postgres_service, redis_service) -> None:  # type: ignore[no-untyped-def]
    expected = os.environ.get("HARNESS_SERVICES", "auto")
    for service in (postgres_service, redis_service):
        assert expected in ("auto", service.backend)
        assert str(service).startswith(service.name)
