"""The wallet, tested with the harness's generic fixtures only: no port, no env, no vendor account."""

import httpx
import openai
import pytest
from creditgate_harness import Fault, Reply


async def open_wallet(client: httpx.AsyncClient, balance: int) -> int:
    response = await client.post("/wallets", json={"owner": "ada", "balance": balance})
    return int(response.json()["id"])


def test_the_openai_sdk_with_its_defaults_is_faked(fake_openai):
    fake_openai.state.push(Reply(content="scripted", prompt_tokens=3, completion_tokens=2), Fault.status_code(503))
    client = openai.OpenAI(max_retries=0)  # default base URL https://api.openai.com/v1, key from the fixture's env

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "scripted"
    assert reply.usage is not None
    assert reply.usage.total_tokens == 5
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert error.value.status_code == 503
    assert [call.path for call in fake_openai.state.calls] == ["/v1/chat/completions"] * 2


async def test_an_answer_is_paid_with_its_tokens(async_client, fake_openai):
    wallet = await open_wallet(async_client, 100)
    fake_openai.state.push(Reply(content="42", prompt_tokens=10, completion_tokens=5))

    response = await async_client.post(f"/wallets/{wallet}/ask", json={"question": "meaning of life?"})

    assert response.json() == {"answer": "42", "balance": 85}


async def test_an_upstream_outage_costs_nothing(async_client, fake_openai):
    wallet = await open_wallet(async_client, 100)
    fake_openai.state.push(Fault.status_code(503))

    response = await async_client.post(f"/wallets/{wallet}/ask", json={"question": "hi"})

    assert response.status_code == 502
    assert (await async_client.get(f"/wallets/{wallet}")).json()["balance"] == 100


async def test_claude_answers_are_paid_too(async_client, fake_anthropic):
    wallet = await open_wallet(async_client, 100)
    fake_anthropic.state.push(Reply(content="bonjour", prompt_tokens=7, completion_tokens=3))

    response = await async_client.post(f"/wallets/{wallet}/ask-claude", json={"question": "hello in French?"})

    assert response.json() == {"answer": "bonjour", "balance": 90}


async def test_a_stripe_top_up_is_credited_exactly_once(async_client, fake_stripe, stripe_webhooks):
    wallet = await open_wallet(async_client, 0)
    checkout = (await async_client.post(f"/wallets/{wallet}/top-up", json={"cents": 500})).json()
    assert checkout["id"].startswith("cs_test_")

    fake_stripe.complete(checkout["id"])  # the customer pays
    outcomes = await stripe_webhooks.to(async_client, "/stripe/webhook").deliver_pending(times=3, shuffle=True)

    assert sorted(r.json()["outcome"] for r in outcomes) == ["credited", "duplicate", "duplicate"]
    assert (await async_client.get(f"/wallets/{wallet}")).json()["balance"] == 50_000


async def test_every_test_gets_a_fresh_database(async_client):
    assert (await async_client.get("/wallets/1")).status_code == 404


def test_the_app_on_a_real_port(live_server, fake_openai):  # the same fake, served on a port for the server
    wallet = httpx.post(f"{live_server.url}/wallets", json={"owner": "bo", "balance": 20}).json()["id"]
    fake_openai.state.push(Reply(content="over the wire", prompt_tokens=4, completion_tokens=4))

    answer = httpx.post(f"{live_server.url}/wallets/{wallet}/ask", json={"question": "hi"}).json()

    assert answer == {"answer": "over the wire", "balance": 12}
