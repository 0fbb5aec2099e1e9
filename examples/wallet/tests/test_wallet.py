"""The wallet, tested with the harness's fixtures and its money checks: no port, no env, no vendor account.

Every money verdict comes from the harness: ``check_money`` compares the wallet's books (read by ``LEDGER``)
with what the fake upstream served and what the fake Stripe was paid; ``LEDGER`` also checks every test's
database afterwards (balances never below zero, each balance the sum of its entries).
"""

from decimal import Decimal

import httpx
import openai
import pytest
from creditgate_harness import Fault, LedgerCheck, Reply, check_money, fire

LEDGER = LedgerCheck(accounts="wallets", entries="entries", entry_account="wallet_id")


@pytest.fixture
def database_check() -> LedgerCheck:
    """After every test: the wallet's books hold (the harness's ready-made ledger check)."""
    return LEDGER


def tokens(served) -> Decimal:
    """The wallet's price: an answer costs its total tokens."""
    return Decimal(served.prompt_tokens + served.completion_tokens)


def question(shot) -> dict[str, str]:
    """Each request's body, with the oracle's marker so the upstream's record names the request and the wallet."""
    return {"question": f"what is the meaning of life? {shot.marker}"}


async def open_wallet(client: httpx.AsyncClient, balance: int) -> int:
    response = await client.post("/wallets", json={"owner": "ada", "balance": balance})
    return int(response.json()["id"])


def test_the_openai_sdk_with_its_defaults_is_faked(fake_openai):
    fake_openai.state.push(Reply(content="scripted", prompt_tokens=3, completion_tokens=2), Fault.status_code(503))
    client = openai.OpenAI(max_retries=0)  # default base URL https://api.openai.com/v1, key from the fixture's env

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "scripted"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


async def test_answers_are_charged_what_was_served_and_outages_nothing(async_client, fake_openai, database_url):
    wallet = await open_wallet(async_client, 100)
    before = await LEDGER.read(database_url)
    fake_openai.state.push(
        Reply(prompt_tokens=10, completion_tokens=5), Fault.status_code(503), Reply(), Fault.status_code(503)
    )

    shots = await fire(async_client, 4, "POST", f"/wallets/{wallet}/ask", json=question, account=wallet)

    assert sorted(s.status for s in shots) == [200, 200, 502, 502]
    check_money(
        outcomes=shots,
        served=fake_openai.state.served,
        before=before,
        after=await LEDGER.read(database_url),
        price=tokens,
    ).assert_ok()


async def test_claude_answers_are_charged_what_was_served(async_client, fake_anthropic, database_url):
    wallet = await open_wallet(async_client, 100)
    before = await LEDGER.read(database_url)
    fake_anthropic.state.push(Reply(content="bonjour", prompt_tokens=7, completion_tokens=3))

    shots = await fire(async_client, 1, "POST", f"/wallets/{wallet}/ask-claude", json=question, account=wallet)

    assert shots[0].json()["answer"] == "bonjour"
    check_money(
        outcomes=shots,
        served=fake_anthropic.state.served,
        before=before,
        after=await LEDGER.read(database_url),
        price=tokens,
    ).assert_ok()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_asks_never_spend_a_token_twice(async_client, fake_openai, database_url):
    wallet = await open_wallet(async_client, 100)
    before = await LEDGER.read(database_url)
    fake_openai.state.default = Reply(prompt_tokens=10, completion_tokens=5)  # 8 × 15 tokens > 100

    # hold=: the upstream answers only once all 8 requests are inside the app
    shots = await fire(
        async_client, 8, "POST", f"/wallets/{wallet}/ask", json=question, account=wallet, hold=fake_openai.state
    )

    check_money(
        outcomes=shots,
        served=fake_openai.state.served,
        before=before,
        after=await LEDGER.read(database_url),
        price=tokens,
    ).assert_ok()
    assert sorted(s.status for s in shots) == [200] * 6 + [402] * 2


async def test_a_redelivered_top_up_is_credited_once(async_client, fake_stripe, stripe_webhooks, database_url):
    wallet = await open_wallet(async_client, 0)
    before = await LEDGER.read(database_url)
    checkout = (await async_client.post(f"/wallets/{wallet}/top-up", json={"cents": 500})).json()

    fake_stripe.complete(checkout["id"])  # the customer pays
    await stripe_webhooks.to(async_client, "/stripe/webhook").deliver_pending(times=3, shuffle=True)

    check_money(
        payments=fake_stripe.state.payments,
        payment_account="wallet_id",  # the Checkout Session metadata the wallet sets
        payment_credits="tokens",
        before=before,
        after=await LEDGER.read(database_url),
    ).assert_ok()


async def test_every_test_gets_a_fresh_database(async_client):
    assert (await async_client.get("/wallets/1")).status_code == 404


async def test_the_app_on_a_real_port(live_server, fake_openai, database_url):
    """The same checks on the app under uvicorn (the fake is served on a port for it, with the same state)."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        wallet = await open_wallet(client, 20)
        before = await LEDGER.read(database_url)
        fake_openai.state.default = Reply(content="over the wire", prompt_tokens=4, completion_tokens=4)

        shots = await fire(
            client, 3, "POST", f"/wallets/{wallet}/ask", json=question, account=wallet, hold=fake_openai.state
        )

    check_money(
        outcomes=shots,
        served=fake_openai.state.served,
        before=before,
        after=await LEDGER.read(database_url),
        price=tokens,
    ).assert_ok()
    assert sorted(s.status for s in shots) == [200, 200, 402]
