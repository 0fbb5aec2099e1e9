"""creditgate_harness.oracle: the money oracle passes a correct gateway and fails planted money bugs.

The pure tests build the records by hand. The gateway tests run real requests and a real payment (its webhook
delivered three times, shuffled, concurrently with spending) through the in-process gateway, take the oracle's
inputs only from the fakes' records, the clients' outcomes and the admin audit endpoint, and expect a clean verdict
— then plant a bug in the gateway (a settle that charges the whole hold; a webhook that credits every delivery)
and expect the oracle to name it.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
import pytest

from creditgate.billing import webhooks
from creditgate.ledger import service as ledger_service
from creditgate.testing.gateway import TestUser
from creditgate_harness import (
    AccountBooks,
    Books,
    FakeProvider,
    Fault,
    OracleReport,
    Outcome,
    Payment,
    Pricing,
    Served,
    books_from_audit,
    check_money,
    marker,
    sign_payload,
)
from creditgate_harness.fakes.providers.app import ServedCompletion
from creditgate_harness.fixtures.fakes import StripeFake

D = Decimal
PRICING = Pricing({"m": (D("0.0025"), D("0.01"))}, margin=D("1.5"), credit_value_usd=D("0.01"), increment=D("0.01"))


def served(rid: str, account: str, *, stream: bool = False, **kw: Any) -> Served:
    fields: dict[str, Any] = {
        "model": "m",
        "texts": [f"hello {marker(rid, account)}"],
        "stream": stream,
        "prompt_tokens": 10,
        "completion_tokens": 10,
        "usage_sent": True,
        "content": "Hello there.",
        "max_tokens": 100,
    }
    return Served(**(fields | kw))


def test_the_pricing_follows_the_charging_rules() -> None:
    # (10 × 0.0025 + 10 × 0.01) / 1000 × 1.5 / 0.01 = 0.01875 → 0.02 at a 0.01 increment
    assert served("r", "1").price(PRICING) == D("0.02")
    # no usage: the prompt estimate plus an estimate of the text delivered
    assert served("r", "1", usage_sent=False).price(PRICING) > D("0.02")
    # a stream cut before any text: nothing
    assert served("r", "1", stream=True, usage_sent=False, content="").price(PRICING) == D("0.00")
    # not capped at the hold (issue 26): what the upstream served is owed, whatever max_tokens said
    beyond = served("r", "1", completion_tokens=10_000, max_tokens=5)
    assert beyond.price(PRICING) == served("r", "1", completion_tokens=10_000).price(PRICING) == D("15.01")


def test_books_that_match_what_happened_pass() -> None:
    report = check_money(
        outcomes=[Outcome("a", "1", 200), Outcome("b", "1", 200, stream=True), Outcome("c", "1", 402)],
        served=[served("a", "1"), served("b", "1", stream=True)],
        payments=[Payment("cs_1", "1", D("500"))],
        books=[Books("1", initial=D(50), final=D("549.96"), purchases=D(500), charges=D("0.04"))],
        pricing=PRICING,
    )
    assert report.ok, str(report)
    assert "every account's books match" in str(report)


def test_an_empty_run_is_not_a_pass() -> None:
    report = check_money(outcomes=[], served=[], payments=[], books=[], pricing=PRICING)
    assert not report.ok
    assert "NOTHING CHECKED" in str(report)


@pytest.mark.parametrize(
    ("books", "check"),
    [
        (Books("1", initial=D(50), final=D("49.98"), purchases=D(0), charges=D("0.02")), None),
        (Books("1", initial=D(50), final=D("49.80"), purchases=D(0), charges=D("0.20")), "charges"),  # whole hold
        (Books("1", initial=D(50), final=D("50.00"), purchases=D(0), charges=D("0.00")), "charges"),  # served free
        (Books("1", initial=D(50), final=D("49.90"), purchases=D(0), charges=D("0.02")), "balance"),  # money gone
        (Books("1", initial=D(50), final=D("549.98"), purchases=D(500), charges=D("0.02")), "purchases"),  # unpaid
    ],
)
def test_each_kind_of_wrong_book_is_named(books: Books, check: str | None) -> None:
    report = check_money(
        outcomes=[Outcome("a", "1", 200), Outcome("z", "1", 503)],
        served=[served("a", "1"), served("z", "1")],  # z was served but failed: it costs nothing
        payments=[],
        books=[books],
        pricing=PRICING,
    )
    assert [v.check for v in report.violations][:1] == ([check] if check else [])


def test_indeterminate_requests_widen_the_range_and_nothing_else() -> None:
    outcomes = [Outcome("a", "1", 200), Outcome("b", "1", 0), Outcome("c", "1", 200, stream=True, complete=False)]
    rows = [served("a", "1"), served("b", "1"), served("c", "1", stream=True)]
    for charges in (D("0.02"), D("0.04"), D("0.06")):
        books = Books("1", initial=D(50), final=D(50) - charges, purchases=D(0), charges=charges)
        report = check_money(outcomes=outcomes, served=rows, payments=[], books=[books], pricing=PRICING)
        assert report.ok, str(report)
    too_much = Books("1", initial=D(50), final=D("49.92"), purchases=D(0), charges=D("0.08"))
    report = check_money(outcomes=outcomes, served=rows, payments=[], books=[too_much], pricing=PRICING)
    assert [v.check for v in report.violations] == ["charges", "balance"]
    assert report.accounts["1"].indeterminate == 2


def test_a_payment_credited_twice_and_holds_left_open_fail() -> None:
    books = Books("1", initial=D(0), final=D(1000), purchases=D(1000), charges=D(0), open_holds=2, stale_holds=1)
    report = check_money(
        outcomes=[Outcome("x", "1", 402)],
        served=[],
        payments=[Payment("cs_1", "1", D(500))],
        books=[books],
        pricing=PRICING,
    )
    assert {v.check for v in report.violations} == {"purchases", "balance", "stale-hold"}
    assert report.pending_holds == 1


def test_holds_still_before_their_ttl_make_the_verdict_wait() -> None:
    books = Books(
        "1", initial=D(50), final=D("49.78"), purchases=D(0), charges=D("0.02"), open_held=D("0.20"), open_holds=1
    )
    report = check_money(
        outcomes=[Outcome("a", "1", 200)], served=[served("a", "1")], payments=[], books=[books], pricing=PRICING
    )
    assert not report.violations
    assert not report.ok
    assert "INCONCLUSIVE" in str(report)


# -- any app: the fakes' own records, a price callable, books snapshots -----------------------------------------
def tokens(s: Any) -> Decimal:
    """A wallet's price: an answer costs its total tokens."""
    return Decimal(s.prompt_tokens + s.completion_tokens)


def completion(rid: str, account: str, *, tokens: tuple[int, int] = (10, 5), stream: bool = False) -> ServedCompletion:
    """What the fake provider itself records (its ``served`` list), not a conversion of it."""
    return ServedCompletion(
        "/v1/chat/completions", "gpt-4o-mini", [f"q {marker(rid, account)}"], stream, *tokens, True, "a", True, 0.0
    )


def wallet(balance: int, *entries: int) -> AccountBooks:
    return AccountBooks("1", D(balance), tuple((str(i), D(a)) for i, a in enumerate(entries, 1)))


RUN: dict[str, Any] = {  # wallet 1 opened with 100: two answers of 15 and a 503, then a top-up of 500 paid once
    "outcomes": [Outcome("a", "1", 200), Outcome("b", "1", 200), Outcome("c", "1", 502)],
    "served": [completion("a", "1"), completion("b", "1")],
    "payments": [{"checkout_session": "cs_1", "metadata": {"wallet_id": "1", "tokens": "500"}}],
    "payment_account": "wallet_id",
    "payment_credits": "tokens",
    "before": {"1": wallet(100, 100)},
    "price": tokens,
}


def test_the_fakes_own_records_are_taken_as_they_are() -> None:
    """Issue 27: ``'ServedCompletion' object has no attribute 'price'`` — the fake's records need no conversion."""
    fake = [completion("a", "1", tokens=(10, 10))]
    books = [Books("1", initial=D(50), final=D("49.98"), purchases=D(0), charges=D("0.02"))]
    for served_rows in (fake, [c.as_json() for c in fake]):  # the objects, or GET /_fake/served rows
        report = check_money(
            outcomes=[Outcome("a", "1", 200)],
            served=served_rows,
            books=books,
            pricing=Pricing({"gpt-4o-mini": PRICING.models["m"]}, increment=D("0.01")),
        )
        assert report.ok, str(report)


def test_books_that_match_what_happened_pass_with_a_price_callable() -> None:
    report = check_money(**RUN, after={"1": wallet(570, 100, -15, -15, 500)})
    assert report.ok, str(report)
    assert report.accounts["1"].charges_min == D(30)
    assert report.accounts["1"].purchases == D(500)


@pytest.mark.parametrize(
    ("after", "violations"),
    [
        (  # the 503 billed too
            wallet(566, 100, -15, -15, -4, 500),
            [
                "[charges] account 1: the books charged 34.00 for usage; the upstream served 30.00 (2 answered, 0 "
                "indeterminate requests)",
                "[balance] account 1: final balance 566 but initial 100 + purchases 500.00 - charges gives 570.00",
            ],
        ),
        (  # the webhook credited twice
            wallet(1070, 100, -15, -15, 500, 500),
            [
                "[purchases] account 1: the books credited 1000.00 for purchases; Stripe completed 1 payments worth "
                "500.00",
                "[balance] account 1: final balance 1070 but initial 100 + purchases 500.00 - charges gives 570.00",
            ],
        ),
        (  # two answers written from one stale read, and the top-up not yet in: the entries go below zero
            wallet(85, 100, -15, -115),
            [
                "[purchases] account 1: the books credited 0.00 for purchases; Stripe completed 1 payments "
                "worth 500.00",
                "[charges] account 1: the books charged 130.00 for usage; the upstream served 30.00 (2 answered, 0 "
                "indeterminate requests)",
                "[balance] account 1: final balance 85 but initial 100 + purchases 500.00 - charges gives 570.00",
                "[negative-balance] account 1: the entries take the balance to -30.00 at entry 3;"
                " it must never go below 0",
                "[entries] account 1: balance 85 but its 3 entries sum to -30.00; every "
                "balance change must be one entry",
            ],
        ),
        (  # no entries: the balance alone, and it is below zero
            AccountBooks("1", D(-1)),
            [
                "[balance] account 1: final balance -1 but initial 100 + purchases 500.00 - charges gives 570.00",
                "[negative-balance] account 1: balance -1; it must never go below 0",
            ],
        ),
    ],
    ids=["charge-on-failure", "double-credit", "lost-update", "balance-only"],
)
def test_each_wrong_book_is_said_in_words(after: AccountBooks, violations: list[str]) -> None:
    report = check_money(**RUN, after={"1": after})
    assert [str(v) for v in report.violations] == violations
    assert not report.ok
    with pytest.raises(AssertionError, match=r"money oracle: 1 accounts, 3 requests .* violation\(s\)"):
        report.assert_ok()


def test_tolerance_allows_overcharge_never_undercharge() -> None:
    over, under = wallet(568, 100, -16, -16, 500), wallet(572, 100, -14, -14, 500)
    assert check_money(**RUN, after={"1": over}, tolerance=D(2)).ok
    assert not check_money(**RUN, after={"1": over}, tolerance=D(1)).ok
    assert {v.check for v in check_money(**RUN, after={"1": under}, tolerance=D(5)).violations} == {
        "charges",
        "balance",
    }


def test_nothing_checked_is_not_a_pass() -> None:
    books = {"1": wallet(100, 100)}
    quiet = check_money(before=books, after=books, price=tokens)  # an account, but no request and no payment
    assert not quiet.ok
    assert "NOTHING CHECKED" in str(quiet)
    elsewhere = check_money(
        payments=[{"checkout_session": "cs_9", "metadata": {"account_id": "9", "credits": "5"}}],
        before=books,
        after=books,
    )
    assert not elsewhere.ok
    assert "1 payments are for accounts the books do not list" in str(elsewhere)
    paid = check_money(payments=[Payment("cs_1", "1", D(5))], before=books, after={"1": wallet(105, 100, 5)})
    assert paid.ok, str(paid)


def test_a_callers_attribution_and_a_stream_on_one_side_only() -> None:
    unmarked = [replace(completion("x", "1", stream=True), texts=["no marker here"])]
    after = {"1": wallet(85, 100, -15)}
    outcomes = [Outcome("r1", "1", 200)]  # the client did not stream; the app streamed from the upstream
    by_default = check_money(outcomes=outcomes, served=unmarked, before=RUN["before"], after=after, price=tokens)
    assert [v.check for v in by_default.violations] == ["answered-unserved", "charges", "balance"]
    assert "1 upstream completions name no request" in str(by_default)
    mine = check_money(
        outcomes=outcomes,
        served=unmarked,
        before=RUN["before"],
        after=after,
        price=tokens,
        attribute=lambda s: ("r1", "1"),
    )
    assert mine.ok, str(mine)


def test_misuse_is_a_clear_error() -> None:
    books = {"1": wallet(100, 100)}
    nameless = check_money(outcomes=[Outcome("a", "", 502)], before=books, after=books)
    assert [str(v) for v in nameless.violations] == [
        "[unknown-account] account ?: request a names no account (fire(…, account=…) or Outcome(rid, account, status))"
    ]
    with pytest.raises(TypeError, match=r"needs the books: books=.*or before= and after="):
        check_money(price=tokens)
    with pytest.raises(TypeError, match="books= or before=/after=, not both"):
        check_money(books=[], before=books, after=books, price=tokens)
    with pytest.raises(TypeError, match="one price: price= or pricing=, not both"):
        check_money(before=books, after=books, price=tokens, pricing=PRICING)
    with pytest.raises(TypeError, match="needs a price for what was served: price=lambda served"):
        check_money(outcomes=[Outcome("a", "1", 200)], served=[completion("a", "1")], before=books, after=books)
    with pytest.raises(
        ValueError, match=r"no metadata\['account_id'\].*pass payment_account=.*it set: \['wallet_id'\]"
    ):
        check_money(payments=[{"checkout_session": "cs_1", "metadata": {"wallet_id": "1"}}], before=books, after=books)


# -- against the real gateway, in-process ---------------------------------------------------------------------
Plant = Callable[[pytest.MonkeyPatch], None]


def _charge_the_whole_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ledger_service.settle_hold

    async def settle_hold(session: Any, *, hold_id: int, charge: Decimal, **kw: Any) -> Any:
        from sqlalchemy import select

        from creditgate.db.models import Hold

        held = await session.scalar(select(Hold.amount).where(Hold.id == hold_id))
        return await real(session, hold_id=hold_id, charge=Decimal(held) / 100, **kw)

    monkeypatch.setattr(ledger_service, "settle_hold", settle_hold)


def _credit_every_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both guards gone: every delivery looks like a new event, and the purchase's idempotency key is per delivery."""
    real_apply, real_post = webhooks.apply_event, ledger_service.post_entry

    async def apply_event(session: Any, event: dict[str, Any]) -> str:
        return await real_apply(session, {**event, "id": f"{event['id']}-{uuid.uuid4().hex[:8]}"})

    async def post_entry(session: Any, **kw: Any) -> Any:
        if kw.get("type") == "purchase":
            kw["idempotency_key"] = f"{kw['idempotency_key']}:{uuid.uuid4().hex}"
        return await real_post(session, **kw)

    monkeypatch.setattr(webhooks, "apply_event", apply_event)
    monkeypatch.setattr(webhooks.ledger, "post_entry", post_entry)


async def _run(
    client: httpx.AsyncClient,
    user: TestUser,
    admin: TestUser,
    upstream: FakeProvider,
    stripe: StripeFake,
) -> tuple[list[Outcome], dict[str, Any], dict[str, Any]]:
    """Chats, streams (one cut by the upstream) and one payment whose webhook arrives 3×, shuffled, all at once."""
    audit = "/admin/ledger/audit"
    account = str(user.account_id)
    before = (await client.get(audit, params={"account_id": account}, headers=admin.headers)).json()
    upstream.push(*[Fault.cut_stream(after_chunks=2) if i == 3 else Fault.status_code(503) for i in range(2)])
    outcomes: list[Outcome] = []

    async def chat(stream: bool) -> None:
        rid = uuid.uuid4().hex
        body = {
            "model": "gpt-4o",
            "max_tokens": 100,
            "stream": stream,
            "messages": [{"role": "user", "content": f"hello {marker(rid, account)}"}],
        }
        response = await client.post("/v1/chat/completions", json=body, headers=user.headers)
        outcomes.append(Outcome(rid, account, response.status_code, stream=stream))

    checkout = await client.post("/billing/checkout", json={"amount_usd": "5.00"}, headers=user.headers)
    assert checkout.status_code == 200, checkout.text
    stripe.complete(checkout.json()["id"])
    events = [e for e in stripe.state.events if e["type"] == "checkout.session.completed"] * 3
    random.Random(7).shuffle(events)

    async def deliver(event: dict[str, Any]) -> None:
        payload = json.dumps(event).encode()
        headers = {"Stripe-Signature": sign_payload(payload, secrets=[stripe.webhook_secret])}
        assert (await client.post("/billing/webhook", content=payload, headers=headers)).status_code == 200

    await asyncio.gather(*(chat(i % 3 == 0) for i in range(12)), *(deliver(e) for e in events))
    upstream.push(Fault.cut_stream(after_chunks=2))
    await chat(True)  # a stream the upstream cuts: charged for what was delivered
    after = (
        await client.get(
            audit, params={"account_id": account, "since_entry": before["last_entry_id"]}, headers=admin.headers
        )
    ).json()
    return outcomes, before, after


async def _verdict(
    client: httpx.AsyncClient, admin: TestUser, upstream: FakeProvider, stripe: StripeFake, run: Any
) -> OracleReport:
    outcomes, before, after = run
    catalog = (await client.get("/catalog/models")).json()
    increment = (await client.get("/admin/settings/credit-increment", headers=admin.headers)).json()["increment"]
    pricing = Pricing.from_catalog(catalog, margin=D("1.5"), credit_value_usd=D("0.01"), increment=D(increment))
    return check_money(
        outcomes=outcomes,
        served=[Served.from_json(s.as_json()) for s in upstream.served],
        payments=[Payment.from_json(p) for p in stripe.state.payments],
        books=books_from_audit(before, after),
        pricing=pricing,
    )


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        (None, set()),
        (_charge_the_whole_hold, {"charges", "balance"}),
        (_credit_every_delivery, {"purchases", "balance"}),
    ],
    ids=["correct-gateway", "settle-charges-the-whole-hold", "webhook-credits-every-delivery"],
)
async def test_the_oracle_passes_the_gateway_and_fails_planted_bugs(
    async_client: httpx.AsyncClient,
    cg_funded_user: TestUser,
    cg_admin_user: TestUser,
    cg_upstream: FakeProvider,
    fake_stripe: StripeFake,
    monkeypatch: pytest.MonkeyPatch,
    plant: Plant | None,
    expected: set[str],
) -> None:
    if plant is not None:
        plant(monkeypatch)
    run = await _run(async_client, cg_funded_user, cg_admin_user, cg_upstream, fake_stripe)
    outcomes = run[0]
    assert sorted({o.status for o in outcomes}) == [200, 502] or sorted({o.status for o in outcomes}) == [200]
    report = await _verdict(async_client, cg_admin_user, cg_upstream, fake_stripe, run)
    print(report)  # shown with -s: the verdict and, for a planted bug, the violations it names
    assert report.requests == 13
    assert report.payments == 1
    assert {v.check for v in report.violations} == expected, str(report)
    assert report.ok is (plant is None)
    if plant is _credit_every_delivery:  # the ledger credited the one payment three times
        assert "credited 1500.00 for purchases; Stripe completed 1 payments worth 500.00" in str(report)
