"""The wallet API. Each answer costs its total tokens; a failed upstream call costs nothing.

``WALLET_BUG`` plants one money bug, for the example's CI to show that the harness's own checks catch it (default:
none, the correct app):

- ``double-credit``: a Stripe webhook credits every delivery (no idempotency on the Checkout Session);
- ``race``: the balance is checked on a read taken before the upstream call and written from it (no atomic
  conditional update), so concurrent asks spend the same tokens twice;
- ``charge-on-failure``: an upstream failure (503) still bills the prompt.
"""

from __future__ import annotations

import os

import anthropic
import openai
import stripe
from fastapi import FastAPI, HTTPException, Request
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.models import Entry, Wallet

BUGS = ("double-credit", "race", "charge-on-failure")


def create_app(database_url: str | None = None) -> FastAPI:
    bug = os.environ.get("WALLET_BUG", "")
    if bug and bug not in BUGS:
        raise ValueError(f"WALLET_BUG={bug!r}: use one of {', '.join(BUGS)}, or leave it unset for the correct app")
    stripe.api_base = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")  # a fake Stripe on a port, in tests
    engine = create_async_engine(database_url or os.environ.get("WALLET_DATABASE_URL", "sqlite+aiosqlite:///wallet.db"))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI(title="wallet")

    @app.post("/wallets")
    async def open_wallet(body: dict[str, object]) -> dict[str, object]:
        async with sessions() as session, session.begin():
            wallet = Wallet(owner=str(body["owner"]), balance=int(str(body.get("balance", 0))))
            session.add(wallet)
            await session.flush()
            session.add(Entry(wallet_id=wallet.id, kind="open", amount=wallet.balance))
        return {"id": wallet.id, "balance": wallet.balance}

    @app.get("/wallets/{wallet_id}")
    async def get_wallet(wallet_id: int) -> dict[str, object]:
        async with sessions() as session:
            wallet = await session.get(Wallet, wallet_id)
        if wallet is None:
            raise HTTPException(404, "no such wallet")
        return {"id": wallet.id, "balance": wallet.balance}

    async def balance_before_the_call(wallet_id: int) -> int:
        """A cheap early refusal; the charge itself checks again, atomically."""
        async with sessions() as session:
            wallet = await session.get(Wallet, wallet_id)
        if wallet is None:
            raise HTTPException(404, "no such wallet")
        if wallet.balance <= 0:
            raise HTTPException(402, "the wallet is empty")
        return wallet.balance

    async def charge(wallet_id: int, tokens: int, *, seen: int) -> int:
        async with sessions() as session, session.begin():
            if bug == "race":  # BUG: checks and writes the balance read before the upstream call
                balance = seen - tokens if seen >= tokens else None
                if balance is not None:
                    await session.execute(update(Wallet).where(Wallet.id == wallet_id).values(balance=balance))
            else:
                balance = await session.scalar(
                    update(Wallet)
                    .where(Wallet.id == wallet_id, Wallet.balance >= tokens)
                    .values(balance=Wallet.balance - tokens)
                    .returning(Wallet.balance)
                )
            if balance is not None:
                session.add(Entry(wallet_id=wallet_id, kind="charge", amount=-tokens))
        if balance is None:
            raise HTTPException(402, "not enough tokens in the wallet")
        return balance

    @app.post("/wallets/{wallet_id}/ask")
    async def ask(wallet_id: int, body: dict[str, str]) -> dict[str, object]:
        seen = await balance_before_the_call(wallet_id)
        try:
            reply = await openai.AsyncOpenAI(max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": body["question"]}]
            )
        except openai.APIError as exc:
            if bug == "charge-on-failure":  # BUG: bills the prompt although nothing was answered
                await charge(wallet_id, len(body["question"]) // 4 + 1, seen=seen)
            raise HTTPException(502, f"OpenAI failed: {type(exc).__name__}") from exc
        assert reply.usage is not None
        balance = await charge(wallet_id, reply.usage.total_tokens, seen=seen)
        return {"answer": reply.choices[0].message.content, "balance": balance}

    @app.post("/wallets/{wallet_id}/ask-claude")
    async def ask_claude(wallet_id: int, body: dict[str, str]) -> dict[str, object]:
        seen = await balance_before_the_call(wallet_id)
        try:
            reply = await anthropic.AsyncAnthropic(max_retries=0).messages.create(
                model="claude-3-5-haiku-latest",
                max_tokens=200,
                messages=[{"role": "user", "content": body["question"]}],
            )
        except anthropic.APIError as exc:
            raise HTTPException(502, f"Anthropic failed: {type(exc).__name__}") from exc
        balance = await charge(wallet_id, reply.usage.input_tokens + reply.usage.output_tokens, seen=seen)
        text = "".join(block.text for block in reply.content if block.type == "text")
        return {"answer": text, "balance": balance}

    @app.post("/wallets/{wallet_id}/top-up")
    def top_up(wallet_id: int, body: dict[str, int]) -> dict[str, str]:
        session = stripe.checkout.Session.create(
            api_key=os.environ["STRIPE_API_KEY"],
            mode="payment",
            line_items=[
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": body["cents"],
                        "product_data": {"name": "tokens"},
                    },
                }
            ],
            metadata={"wallet_id": str(wallet_id), "tokens": str(body["cents"] * 100)},
            success_url="https://wallet.example/ok",
            cancel_url="https://wallet.example/cancel",
        )
        return {"id": session.id, "url": str(session.url)}

    @app.post("/stripe/webhook")
    async def stripe_webhook(request: Request) -> dict[str, str]:
        try:
            event = stripe.Webhook.construct_event(
                await request.body(), request.headers.get("stripe-signature", ""), os.environ["STRIPE_WEBHOOK_SECRET"]
            )
        except (ValueError, stripe.SignatureVerificationError) as exc:
            raise HTTPException(400, "bad signature") from exc
        if event["type"] != "checkout.session.completed":
            return {"outcome": "ignored"}
        paid = event["data"]["object"]
        wallet_id, tokens = int(paid["metadata"]["wallet_id"]), int(paid["metadata"]["tokens"])
        ref = None if bug == "double-credit" else paid["id"]  # BUG: no idempotency key, every delivery credits
        try:
            async with sessions() as session, session.begin():
                session.add(Entry(wallet_id=wallet_id, kind="top-up", amount=tokens, ref=ref))
                await session.flush()  # a second delivery of the same session stops here
                await session.execute(
                    update(Wallet).where(Wallet.id == wallet_id).values(balance=Wallet.balance + tokens)
                )
        except IntegrityError:
            return {"outcome": "duplicate"}
        return {"outcome": "credited"}

    return app
