"""FastAPI's native OpenTelemetry is off unless ``CREDITGATE_OTEL_ENABLED``: no provider lookup per request."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace

from creditgate.settings import Settings


@pytest.fixture(params=[False, True], ids=["default", "otel-enabled"])
def cg_settings(cg_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return cg_settings.model_copy(update={"otel_enabled": request.param})


async def test_requests_look_for_a_tracer_provider_only_when_enabled(
    async_client: httpx.AsyncClient, cg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[int] = []
    real = trace.get_tracer_provider

    def counting() -> trace.TracerProvider:
        lookups.append(1)
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counting)
    assert (await async_client.get("/health")).status_code == 200
    assert bool(lookups) is cg_settings.otel_enabled
