"""POST /v1/images/generations: per-image charges, sizes, failures."""

from __future__ import annotations

import httpx
import pytest

from creditgate.testing.gateway import TestUser
from creditgate_harness.fakes.providers import FakeProvider, Fault

IMAGES = "/v1/images/generations"


async def test_images_charged_per_image(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    response = await async_client.post(IMAGES, json={"prompt": "a cat", "n": 2}, headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert response.json()["data"][0]["url"].startswith("https://")
    # 2 × $0.04 × 1.5 / $0.01 = 12 credits
    assert response.headers["X-Creditgate-Credits-Charged"] == "12.00"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "988.00"


@pytest.mark.parametrize(
    "body",
    [{"prompt": "x", "size": "13x13"}, {"prompt": "x", "n": 9}, {"prompt": ""}, {"prompt": "x", "model": "test-model"}],
)
async def test_bad_image_requests_are_400(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, body: dict[str, object]
) -> None:
    response = await async_client.post(IMAGES, json=body, headers=cg_funded_user.headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


async def test_failed_image_generation_is_free(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, cg_upstream: FakeProvider
) -> None:
    cg_upstream.default = Fault.status_code(500)
    assert (await async_client.post(IMAGES, json={"prompt": "x"}, headers=cg_funded_user.headers)).status_code == 502
    assert (await async_client.get("/user/balance", headers=cg_funded_user.headers)).json()["balance"] == "1000.00"


async def test_images_carry_request_id_and_rate_limit_headers(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    response = await async_client.post(IMAGES, json={"prompt": "a cat"}, headers=cg_funded_user.headers)
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"]
    assert int(response.headers["X-RateLimit-Limit"]) - int(response.headers["X-RateLimit-Remaining"]) == 1
