"""Signed garbage (issue 26, class 5): webhooks credit what was paid, and nothing else.

Whoever can make Stripe sign an event — Stripe itself, a replay, a second integration on the same Stripe account,
a Payment Link someone made in the dashboard — must not be able to credit more than the money the events say was
paid, nor credit an account other than the one whose Stripe customer paid. The operator's invariant, checked on the
ledger (the auditor then checks the ledger itself after each test):

- a signed event is applied (200) or refused with a 4xx in the gateway's error shape — never a 5xx;
- a 4xx credits nothing;
- per account, what the events credited never exceeds what their ``amount_total`` paid (in USD, by that account's
  Stripe customer, ``payment_status: paid``) at the gateway's credit value, each Checkout Session counted once;
- an untouched, genuine event is credited (so "refuse everything" does not pass).

And the ``Stripe-Signature`` header is read strictly: one ``t=`` of plain ASCII digits, within the tolerance both
ways, at least one matching ``v1``; any other form is a 4xx even when an HMAC in it matches.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, localcontext
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.db.models import Account, LedgerEntry
from creditgate.settings import Settings
from creditgate.testing.gateway import TestUser, UserFactory
from creditgate_harness.fakes.stripe import StripeWebhooks, sign_payload
from creditgate_harness.fixtures.fakes import StripeFake

pytestmark = pytest.mark.critical

CHECKOUT_TYPES = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
OTHER_TYPES = (
    "charge.refunded",
    "charge.dispute.created",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "checkout.session.expired",
    "customer.created",
    "invoice.paid",
)
HUGE = "x" * 100_000
DROP = object()  # a mutation that removes the field
PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values no Stripe object carries where a number, an id or a word is expected.
HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e30, -1.0, 0.5, 1000.0, 99.99]),
    st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e30", "-100", "0", "", "１００", "٣", "1_000", " 100 ", "+100", "0x10"]
    ),
    st.sampled_from(["100.001", "1e-2", "abc", "usd", "paid", HUGE, "\u0000", "🙂" * 50]),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=4)), max_size=2),
)


@dataclass(frozen=True)
class Tenant:
    user: TestUser
    customer: str | None  # its Stripe customer (None: it never started a checkout)

    @property
    def account_id(self) -> int:
        return self.user.account_id


async def _customer_of(client: httpx.AsyncClient, sm: async_sessionmaker[AsyncSession], user: TestUser) -> str:
    assert (await client.post("/billing/portal", headers=user.headers)).status_code == 200  # creates the customer
    async with sm() as s:
        customer = await s.scalar(select(Account.stripe_customer_id).where(Account.id == user.account_id))
    assert customer
    return customer


@pytest.fixture
async def tenants(
    async_client: httpx.AsyncClient,
    cg_user_factory: UserFactory,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    fake_stripe: StripeFake,
) -> list[Tenant]:
    """Two paying tenants with Stripe customers, and a bystander with none (a target for forged metadata)."""
    payers = [await cg_user_factory() for _ in range(2)]
    bystander = Tenant(await cg_user_factory(credits=5), None)
    return [*[Tenant(u, await _customer_of(async_client, cg_sessionmaker, u)) for u in payers], bystander]


async def credited(sm: async_sessionmaker[AsyncSession]) -> dict[int, int]:
    """Per account, the hundredths every positive ledger entry ever added."""
    async with sm() as s:
        rows = await s.execute(
            select(LedgerEntry.account_id, func.sum(LedgerEntry.amount))
            .where(LedgerEntry.amount > 0)
            .group_by(LedgerEntry.account_id)
        )
        return {int(account): int(total) for account, total in rows}


def paid_for(obj: Any, credit_value: Decimal) -> tuple[str | None, int]:
    """(the paying customer, the hundredths the money bought): what the operator sold, whatever else the event says."""
    if not isinstance(obj, dict):
        return None, 0
    cents, customer = obj.get("amount_total"), obj.get("customer")
    if obj.get("payment_status") != "paid" or obj.get("currency") != "usd" or not isinstance(customer, str):
        return None, 0
    if type(cents) is not int or cents <= 0:
        return None, 0
    with localcontext(prec=80):  # amount_total may be 10**30
        credits = (Decimal(cents) / 100 / credit_value).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
        return customer, int(credits * 100)


def _fullwidth(text: str) -> str:
    return text.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


@dataclass(frozen=True)
class Mutation:
    lies: st.SearchStrategy[Any]  # well-typed, plausible, wrong: what a confused or hostile integration sends
    garbage: st.SearchStrategy[Any] = HOSTILE  # what no Stripe object carries there


def _mutations(
    tenants: list[Tenant], payer: Tenant, cents: int, credits: str, *, uid: str, sellable: tuple[int, int]
) -> dict[str, Mutation]:
    """Field → what an event might carry there instead (every field may also be dropped)."""
    others = [t for t in tenants if t is not payer]
    ids = [str(t.account_id) for t in others] + ["999999"]
    mine = str(payer.account_id)
    forged_ids = [f"+{mine}", f" {mine}", f"{mine} ", f"0{mine}", f"{mine}.0", _fullwidth(mine), f"{mine}_0"]
    promised = Decimal(credits)
    less = sorted({max(1, c) for c in (cents - 1, cents // 2, cents // 100)})
    inflated = [str(promised * 1000), "1000000", "1000000.00", str(promised + Decimal("0.01")), str(promised * 2)]
    forged_credits = ["NaN", "Infinity", "-Infinity", "1e30", "-5", "0.001", "1e-2", _fullwidth(credits), f"+{credits}"]
    return {
        # Less than was promised (a cent less; in the range the gateway sells, so only the comparison with the
        # promise can catch it), or anything else the gateway sells.
        "amount_total": Mutation(
            st.one_of(st.sampled_from(less), st.integers(*sellable)),
            st.one_of(HOSTILE, st.integers(-(10**6), 10**13), st.just(10**19)),
        ),
        "currency": Mutation(st.sampled_from(["eur", "jpy", "gbp", "USD"]), st.one_of(HOSTILE, st.just("usd\u0000"))),
        "customer": Mutation(st.sampled_from([t.customer for t in others] + ["cus_nobody", None])),
        "payment_status": Mutation(st.sampled_from(["unpaid", "no_payment_required", "PAID"])),
        "client_reference_id": Mutation(st.sampled_from(ids)),
        "metadata": Mutation(st.sampled_from([{}, *({"account_id": i, "credits": credits} for i in ids)])),
        "metadata.account_id": Mutation(st.sampled_from(ids), st.one_of(HOSTILE, st.sampled_from(forged_ids))),
        "metadata.credits": Mutation(st.sampled_from(inflated), st.one_of(HOSTILE, st.sampled_from(forged_credits))),
        "id": Mutation(st.just(f"cs_other_{uid}"), st.one_of(HOSTILE, st.just("cs_" + HUGE), st.text(max_size=9))),
        "payment_intent": Mutation(st.just(f"pi_other_{uid}"), st.one_of(HOSTILE, st.just("pi_" + HUGE))),
        "event.id": Mutation(st.just(f"evt_other_{uid}"), st.one_of(HOSTILE, st.just("evt_" + HUGE))),
        "event.type": Mutation(st.sampled_from(OTHER_TYPES), st.one_of(HOSTILE, st.just(CHECKOUT_TYPES[0] + HUGE))),
        "event.data": Mutation(st.just({"object": [1]})),
        "event.data.object": Mutation(st.just([1])),
    }


def _apply(event: dict[str, Any], obj: dict[str, Any], field: str, value: Any) -> None:
    if field.startswith("event."):
        target, key = (event, field[6:]) if field != "event.data.object" else (event.get("data"), "object")
    elif field.startswith("metadata."):
        target, key = obj.get("metadata"), field[9:]
    else:
        target, key = obj, field
    if not isinstance(target, dict):
        return  # a parent is already garbage
    if value is DROP:
        target.pop(key, None)
    else:
        target[key] = value


@settings(PROPERTY, max_examples=150)
@given(data=st.data())
async def test_signed_events_credit_at_most_what_was_paid(
    data: st.DataObject,
    async_client: httpx.AsyncClient,
    fake_stripe: StripeFake,
    cg_stripe_webhooks: StripeWebhooks,
    cg_sessionmaker: async_sessionmaker[AsyncSession],
    cg_settings: Settings,
    tenants: list[Tenant],
) -> None:
    uid = uuid.uuid4().hex[:12]
    sellable = (int(cg_settings.min_topup_usd * 100), int(cg_settings.max_topup_usd * 100))
    payer = data.draw(st.sampled_from(tenants[:2]), label="payer")
    if data.draw(st.booleans(), label="a session the gateway created"):
        usd = data.draw(st.sampled_from(["10", "2.50", "1", "99.99", "10000"]), label="usd")
        checkout = await async_client.post("/billing/checkout", json={"amount_usd": usd}, headers=payer.user.headers)
        assert checkout.status_code == 200, checkout.text
        fake_stripe.complete(checkout.json()["id"])
        completed = fake_stripe.state.events[-1]
        assert completed["type"] == CHECKOUT_TYPES[0]
        obj: dict[str, Any] = json.loads(json.dumps(completed["data"]["object"]))
        credits = obj["metadata"]["credits"]
    else:  # one the gateway has no record of, e.g. it crashed before recording it
        cents = data.draw(st.integers(*sellable), label="cents")  # what the gateway sells
        credits = str((Decimal(cents) / 100 / cg_settings.credit_value_usd).quantize(Decimal("0.01"), ROUND_FLOOR))
        obj = {
            "id": f"cs_adv_{uid}",
            "object": "checkout.session",
            "mode": "payment",
            "status": "complete",
            "payment_status": "paid",
            "amount_total": cents,
            "currency": "usd",
            "customer": payer.customer,
            "client_reference_id": str(payer.account_id),
            "metadata": {"account_id": str(payer.account_id), "credits": credits},
            "payment_intent": f"pi_adv_{uid}",
        }
    event: dict[str, Any] = {
        "id": f"evt_adv_{uid}",
        "object": "event",
        "type": data.draw(st.sampled_from(CHECKOUT_TYPES), label="type"),
        "data": {"object": obj},
    }
    choices = _mutations(tenants, payer, obj["amount_total"], credits, uid=uid, sellable=sellable)
    # What money is paid and whose it is are drawn more often: they are where a wrong answer creates credits.
    weighted = [*sorted(choices), *(["amount_total", "metadata.credits"] * 3), "customer", "metadata.account_id"]
    fields = data.draw(st.lists(st.sampled_from(weighted), unique=True, max_size=3), label="fields")
    for field in fields:
        kind = data.draw(st.sampled_from(["lie", "lie", "lie", "garbage", "garbage", "drop"]), label=f"{field} is a")
        mutation = choices[field]
        value = DROP if kind == "drop" else data.draw(mutation.lies if kind == "lie" else mutation.garbage, label=field)
        _apply(event, obj, field, value)
    deliveries = [event] * data.draw(st.integers(1, 3), label="deliveries")
    if data.draw(st.booleans(), label="twin"):  # another event about the same session
        deliveries.append({**event, "id": f"evt_twin_{uid}", "type": CHECKOUT_TYPES[1]})

    start = await credited(cg_sessionmaker)
    responses = []
    for delivery in deliveries:
        before = await credited(cg_sessionmaker)
        response = await cg_stripe_webhooks.send(delivery)
        after = await credited(cg_sessionmaker)
        assert response.status_code < 500, response.text[:500]
        body = response.json()
        what = body["error"]["code"] if response.status_code >= 400 else body["outcome"]
        hypothesis.event(f"{response.status_code} {what}")
        if response.status_code >= 400:
            error = body["error"]
            assert isinstance(error["type"], str), error  # the gateway's shape: machine-readable type and code
            assert isinstance(error["code"], str), error
            assert after == before, f"a {response.status_code} credited {response.text[:300]}"
        else:
            assert response.status_code == 200
            assert isinstance(body["outcome"], str)
        responses.append(response)

    end = await credited(cg_sessionmaker)
    customer, paid = paid_for(obj if isinstance(event.get("data"), dict) else None, cg_settings.credit_value_usd)
    for tenant in tenants:
        gained = end.get(tenant.account_id, 0) - start.get(tenant.account_id, 0)
        allowed = paid if customer is not None and customer == tenant.customer else 0
        assert gained <= allowed, f"account {tenant.account_id} gained {gained / 100} credits; paid for {allowed / 100}"
    assert sum(end.values()) - sum(start.values()) <= paid, "an account outside the test's tenants was credited"
    if not fields:  # a genuine event: credited once, in full, to its payer
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert responses[0].json()["outcome"] == "credited"
        assert end.get(payer.account_id, 0) - start.get(payer.account_id, 0) == int(Decimal(credits) * 100)


# -- the header ------------------------------------------------------------------------------------------------
TOLERANCE = 300


STAMP_FORMS = (
    "plus",
    "minus",
    "lead-space",
    "trail-space",
    "tab",
    "underscore",
    "leading-zero",
    "decimal",
    "superscript",
    "fullwidth-utf8",
    "exponent",
    "hex",
    "empty",
)


def _render_stamp(ts: int, form: str) -> str:
    """``ts`` as Python's ``int()`` (or a lax parser) would still read it, but not as Stripe writes it."""
    text = str(ts)
    return {
        "plus": f"+{text}",
        "minus": f"-{text}",
        "lead-space": f" {text}",
        "trail-space": f"{text} ",
        "tab": f"\t{text}",
        "underscore": f"{text[:4]}_{text[4:]}",
        "leading-zero": f"0{text}",
        "decimal": f"{text}.0",
        "superscript": text.replace("1", "\u00b9").replace("2", "\u00b2").replace("3", "\u00b3"),
        "fullwidth-utf8": _fullwidth(text),
        "exponent": f"{ts / 10**9}e9",
        "hex": hex(ts),
        "empty": "",
    }[form]


@settings(PROPERTY, max_examples=250)
@given(
    offset=st.one_of(
        st.integers(-250, 250),
        st.sampled_from([-(10**9), -86_400, -3_600, -400, 400, 3_600, 86_400, 10**9, 10**10]),
    ),
    form=st.one_of(st.none(), st.sampled_from(STAMP_FORMS)),
    structure=st.lists(
        st.sampled_from(
            [
                "dup-t-same",
                "dup-t-other",
                "dup-t-first-hostile",
                "no-v1",
                "v0-only",
                "bad-v1",
                "space-after-comma",
                "empty-item",
                "upper-T",
                "no-header",
                "rotated-v1-before",  # valid: a second v1 for an old secret
                "rotated-v1-after",  # valid
                "extra-v0",  # valid: Stripe sends v0 in test mode
                "v1-first",  # valid: order does not matter
            ]
        ),
        unique=True,
        max_size=2,
    ),
)
async def test_signature_headers_are_parsed_strictly(
    async_client: httpx.AsyncClient,
    fake_stripe: StripeFake,
    offset: int,
    form: str | None,
    structure: list[str],
) -> None:
    event = {
        "id": f"evt_hdr_{uuid.uuid4().hex}",
        "object": "event",
        "type": "customer.created",  # applied as "ignored": acceptance changes nothing
        "data": {"object": {"id": "cus_hdr", "object": "customer"}},
    }
    payload = json.dumps(event).encode()
    ts = int(time.time()) + offset
    secret = fake_stripe.webhook_secret
    t_item, v1_item = sign_payload(payload, secrets=[secret], timestamp=ts).split(",")  # the harness's signer
    rotated = sign_payload(payload, secrets=["whsec_rotated_out"], timestamp=ts).split(",")[1]
    valid = abs(offset) <= TOLERANCE - 50  # clear of the edges, however long the run takes
    if form is not None:
        t_item = f"t={_render_stamp(ts, form)}"  # the HMAC still matches the canonical stamp
        valid = False
    items = [t_item, v1_item]
    for change in structure:
        if change == "dup-t-same":
            items.append(t_item)
        elif change == "dup-t-other":
            items.append(f"t={ts + 1}")
        elif change == "dup-t-first-hostile":
            items.insert(0, f"t=+{ts + 10**6}")
        elif change == "no-v1":
            items = [i for i in items if not i.startswith("v1=")]
        elif change == "v0-only":
            items = [i.replace("v1=", "v0=") for i in items]
        elif change == "bad-v1":
            items = [i.replace("v1=", "v1=0") if i.startswith("v1=") else i for i in items]
        elif change == "space-after-comma":
            items = [items[0], *(f" {i}" for i in items[1:])]
        elif change == "empty-item":
            items.insert(1, "")
        elif change == "upper-T":
            items = [f"T={i[2:]}" if i.startswith("t=") else i for i in items]
        elif change == "rotated-v1-before":
            items.insert(1, rotated)
        elif change == "rotated-v1-after":
            items.append(rotated)
        elif change == "extra-v0":
            items.append("v0=" + "ab" * 32)
        elif change == "v1-first":
            items = items[1:] + items[:1]
        if not change.startswith(("rotated", "extra-v0", "v1-first")):
            valid = False
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if "no-header" not in structure:
        header = ",".join(items)
        try:
            headers["Stripe-Signature"] = header.encode("latin-1")  # what Starlette decodes it as
        except UnicodeEncodeError:
            headers["Stripe-Signature"] = header.encode()  # a client sending UTF-8 anyway
    response = await async_client.post("/billing/webhook", content=payload, headers=headers)
    hypothesis.event(f"{response.status_code} {'valid' if valid else 'invalid'}")
    assert response.status_code < 500, response.text
    if valid:
        assert (response.status_code, response.json().get("outcome")) == (200, "ignored"), response.text
    else:
        assert 400 <= response.status_code < 500, f"accepted {headers.get('Stripe-Signature')!r}: {response.text}"
        assert response.json()["error"]["type"] == "invalid_signature", response.text
