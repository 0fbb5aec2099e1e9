"""Read-only checks for a deployed gateway. Safe against production: nothing is written or charged."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.smoke


def test_health_says_database_connected(smoke_client: httpx.Client) -> None:
    response = smoke_client.get("/health")
    assert response.status_code == 200, f"/health answered {response.status_code}: {response.text[:200]}"
    assert response.json()["database"] == "connected", f"/health: {response.json()}"


def test_index_names_the_service(smoke_client: httpx.Client) -> None:
    assert smoke_client.get("/").json()["name"] == "creditgate"


@pytest.mark.parametrize("path", ["/catalog/models", "/catalog/providers", "/openapi.json"])
def test_public_routes_exist(smoke_client: httpx.Client, path: str) -> None:
    response = smoke_client.get(path)
    assert response.status_code == 200, f"GET {path} answered {response.status_code}"


def test_chat_without_a_key_is_401(smoke_client: httpx.Client) -> None:
    response = smoke_client.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert response.status_code == 401, f"unauthenticated chat answered {response.status_code}, not 401"


def test_balance_with_the_key(smoke_client: httpx.Client, smoke_key: str) -> None:
    response = smoke_client.get("/user/balance", headers={"Authorization": f"Bearer {smoke_key}"})
    assert response.status_code == 200, f"/user/balance with SMOKE_API_KEY answered {response.status_code}"
