"""A money oracle independent of the books it checks (Jepsen's bank checker is the model).

An auditor checks a ledger against itself. The oracle checks an app's books against what *happened*, as recorded
outside the app: what the upstream served (the fake provider's ``served``), what Stripe completed (the fake Stripe's
``payments``) and what each client saw (``Outcome``, or the ``Shot`` records of ``fire``). From those alone it
computes, per account, what the books must say, and compares with what they do say:

- **charges** = the price of what the upstream served for that account's answered requests. The price is a
  callable (``price=lambda served: …``) or ``Pricing``, the gateway's charging rules (docs/inference.md):
  the upstream's usage when it sent one; else the prompt estimate plus an estimate of the text delivered (nothing
  when no text was delivered); rounded up to the credit increment — and *not* capped at the hold: the hold is the
  gateway's reservation, not a price, so an oracle that capped at it would repeat the rule that let unheld prompt
  parts ride free (issue 26). A request that failed (402, 429, any other 4xx or 5xx) costs 0. A request without a
  definite outcome (no answer, a stream broken off on the client side — e.g. the worker was killed) may have been
  charged or not: it widens the allowed range by its price, as Jepsen treats indeterminate operations.
  ``tolerance`` allows an account that much overcharge (never an undercharge);
- **purchases** = the credits of every payment Stripe completed for that account, each exactly once;
- **final balance** (plus what is still held) = initial + purchases − charges;
- **never below zero**: no balance in the books, and no point of an account's entries taken in order;
- **balance = sum of entries**, where the app keeps entries;
- **no open hold after its TTL** (the gateway's books).

The books come either as ``Books`` (the gateway's: ``books_from_audit``) or as two snapshots, ``before`` and
``after``, of ``AccountBooks`` per account: each account's balance and, where the app keeps them, its entries
(credits positive, debits negative, every balance change one entry) — what ``LedgerCheck.books`` reads from a
database described by its table and column names. A run proves nothing when it checked nothing: ``report.ok``
is false without any account, or without any request or payment.

Requests are attributed to an account by a marker in the prompt, which the upstream therefore sees
(``marker(rid, account)``: ``[cg-load rid=<id> acct=<account>]``; ``fire``'s ``shot.marker``), or by the caller's
``attribute(served) -> (rid, account) | None``. Pure functions: no I/O, no application import.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

ZERO = Decimal("0.00")
CENT = Decimal("0.01")
_MARKER = re.compile(r"\[cg-load rid=([A-Za-z0-9_-]+) acct=([A-Za-z0-9_-]+)\]")


def marker(rid: str, account: str | int) -> str:
    """What a client puts in a prompt so the upstream's record names the request and the account."""
    return f"[cg-load rid={rid} acct={account}]"


def parse_marker(texts: Iterable[str]) -> tuple[str, str] | None:
    """``(rid, account)`` from a prompt's texts, or ``None`` for traffic that carries no marker."""
    for text in texts:
        if found := _MARKER.search(text):
            return found.group(1), found.group(2)
    return None


def by_marker(served: Any) -> tuple[str, str] | None:
    """The default attribution: ``(rid, account)`` from the marker in a served completion's prompt texts."""
    return parse_marker(_field(served, "texts") or [])


def estimate_tokens(texts: list[str]) -> int:
    """The gateway's documented estimate (catalog/pricing.py): one token per 3 UTF-8 bytes, plus one per text,
    4 per message and 3 per request — deliberately high, so a hold always covers the prompt."""
    return sum(len(t.encode()) // 3 + 1 for t in texts) + 4 * len(texts) + 3


def _field(row: Any, name: str, default: Any = None) -> Any:
    """A field of a served record, whether a ``Served``, the fake's ``ServedCompletion`` or a JSON row."""
    if isinstance(row, Mapping):
        return row.get(name, default)
    return getattr(row, name, default)


@dataclass(frozen=True)
class Pricing:
    """The catalog's USD prices per 1,000 tokens and the gateway's money settings (margin, $ per credit, increment).

    A price callable like any other: ``pricing(served)`` is what the gateway's charging rules make of a served
    completion (a ``Served``, the fake's ``ServedCompletion`` or a ``/_fake/served`` row)."""

    models: Mapping[str, tuple[Decimal, Decimal]]  # model id → (input per 1K, output per 1K)
    margin: Decimal = Decimal("1.5")
    credit_value_usd: Decimal = Decimal("0.01")
    increment: Decimal = Decimal("0.1")

    def __call__(self, served: Any) -> Decimal:
        return Served.of(served).price(self)

    def credits(self, model: str, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """ceil((prompt × input + completion × output) / 1000 × margin / credit value) to the increment."""
        if model not in self.models:
            raise KeyError(f"model {model!r} is not in the catalog the oracle was given")
        price_in, price_out = self.models[model]
        exact = (prompt_tokens * price_in + completion_tokens * price_out) / 1000 * self.margin / self.credit_value_usd
        steps = (exact / self.increment).to_integral_value(rounding=ROUND_CEILING)
        return (steps * self.increment).quantize(CENT)

    @classmethod
    def from_catalog(
        cls, catalog: Mapping[str, Any], *, margin: Decimal, credit_value_usd: Decimal, increment: Decimal
    ) -> Pricing:
        """From ``GET /catalog/models`` (``data[].pricing``) and the settings the deployment runs with."""
        models = {  # image models are priced per image (no token prices): the oracle prices chat only
            m["id"]: (Decimal(m["pricing"]["input_per_1k_usd"]), Decimal(m["pricing"]["output_per_1k_usd"]))
            for m in catalog["data"]
            if "input_per_1k_usd" in m["pricing"]
        }
        return cls(models, margin=margin, credit_value_usd=credit_value_usd, increment=increment)


@dataclass(frozen=True)
class Served:
    """One completion the upstream served: the fields of the fake provider's ``ServedCompletion`` (its ``served``
    list, or ``GET /_fake/served`` rows) the oracle reads. The oracle takes the fake's own records as they are."""

    model: str
    texts: list[str]
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    usage_sent: bool
    content: str
    complete: bool = True
    max_tokens: int | None = None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Served:
        """From a ``GET /_fake/served`` row."""
        return cls(
            model=row["model"],
            texts=list(row["texts"]),
            stream=bool(row["stream"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            usage_sent=bool(row["usage_sent"]),
            content=str(row["content"]),
            complete=bool(row.get("complete", True)),
            max_tokens=row.get("max_tokens"),
        )

    @classmethod
    def of(cls, row: Any) -> Served:
        """A ``Served`` from itself, the fake's ``ServedCompletion`` or a JSON row."""
        if isinstance(row, Served):
            return row
        if isinstance(row, Mapping):
            return cls.from_json(row)
        return cls.from_json({name: getattr(row, name) for name in _SERVED_FIELDS if hasattr(row, name)})

    def price(self, pricing: Pricing) -> Decimal:
        """What the gateway's charging rules make of this completion."""
        prompt_estimate = estimate_tokens(self.texts)
        if self.usage_sent:
            prompt, completion = self.prompt_tokens, self.completion_tokens
        elif self.content:
            prompt, completion = prompt_estimate, estimate_tokens([self.content])
        else:
            return ZERO
        # No cap at the hold: a hold is a reservation, not a price. What the upstream served is what is owed.
        return pricing.credits(self.model, prompt_tokens=prompt, completion_tokens=completion)


_SERVED_FIELDS = (
    "model",
    "texts",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "usage_sent",
    "content",
    "complete",
    "max_tokens",
)


@dataclass(frozen=True)
class Outcome:
    """What the client saw for one request: HTTP status (0: no answer) and, for a stream, whether it was read to
    its end (a stream the upstream cut still ends cleanly; one broken off by a dead worker does not)."""

    rid: str
    account: str
    status: int
    stream: bool = False
    complete: bool = True

    @property
    def definite(self) -> bool:
        """The client knows how it ended: an answer, read to its end if it was a 2xx stream."""
        return self.status != 0 and (self.complete or not 200 <= self.status < 300)

    @property
    def answered(self) -> bool:
        """A 2xx answer: the request may be charged the price of what was served for it."""
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Payment:
    """One payment Stripe completed, for an account, worth some credits."""

    id: str
    account: str
    credits: Decimal

    @classmethod
    def from_json(
        cls,
        row: Mapping[str, Any],
        *,
        account: str = "account_id",
        credits: str | Callable[[Mapping[str, Any]], Decimal] = "credits",
    ) -> Payment:
        """From a fake Stripe ``payments`` row (``GET /_test/payments``). ``account`` and ``credits`` name the
        Checkout Session metadata keys the app set (the gateway's by default; the account falls back to the
        session's ``client_reference_id``), or ``credits`` computes them from the row (e.g. its ``amount_cents``)."""
        metadata = row.get("metadata") or {}
        owner = metadata.get(account) or row.get("client_reference_id")
        if owner is None:
            raise ValueError(
                f"payment {row.get('checkout_session')}: no metadata[{account!r}] and no client_reference_id; "
                f"pass payment_account= the metadata key your app sets on its Checkout Session "
                f"(it set: {sorted(metadata) or 'none'})"
            )
        worth = credits(row) if callable(credits) else Decimal(str(metadata.get(credits, "0")))
        return cls(str(row["checkout_session"]), str(owner), Decimal(worth))


@dataclass(frozen=True)
class AccountBooks:
    """One account as the app's books show it at one moment: its balance and, where the app keeps them, its
    entries in order — ``(entry id, signed amount)``, credits positive and debits negative, every change of the
    balance one entry (an opening balance too). ``None``: the app keeps a balance only."""

    account: str
    balance: Decimal
    entries: tuple[tuple[str, Decimal], ...] | None = None


class BooksReader(Protocol):
    """What the oracle needs of an app's books: a snapshot of every account (``LedgerCheck`` is one)."""

    def books(self, url: str) -> dict[str, AccountBooks]: ...


@dataclass(frozen=True)
class Books:
    """What the books say about one account: before and after the run, and the run's entries by kind
    (``None``: the books do not tell, so only the balance is checked)."""

    account: str
    initial: Decimal
    final: Decimal
    purchases: Decimal | None  # credits in the run (purchase entries)
    charges: Decimal | None  # debits in the run (api_usage entries), as a positive amount
    open_held: Decimal = ZERO  # still held at the final read (not yet expired)
    open_holds: int = 0
    stale_holds: int = 0  # open past their expiry
    entries: tuple[tuple[str, Decimal], ...] | None = None  # every entry of the account at the final read

    @classmethod
    def between(cls, before: Mapping[str, AccountBooks], after: Mapping[str, AccountBooks]) -> list[Books]:
        """Each account's books from a snapshot before the run and one after it: the run's entries are those
        the first does not have, positive ones credits, negative ones debits (an account opened during the run
        starts at 0, so its opening balance counts as a purchase: snapshot after opening accounts)."""
        books = []
        for account, now in sorted(after.items()):
            then = before.get(account)
            initial = then.balance if then is not None else ZERO
            purchases = charges = None
            if now.entries is not None:
                known = {entry for entry, _ in (then.entries or ())} if then is not None else set()
                new = [amount for entry, amount in now.entries if entry not in known]
                purchases = sum((a for a in new if a > 0), ZERO)
                charges = -sum((a for a in new if a < 0), ZERO)
            books.append(cls(account, initial, now.balance, purchases, charges, entries=now.entries))
        return books


@dataclass(frozen=True)
class Violation:
    """One thing the books got wrong: the account, the check (a short name) and what was expected vs. found."""

    account: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] account {self.account}: {self.detail}"


@dataclass
class AccountResult:
    """What the oracle expects of one account, from the records outside the books."""

    account: str
    charges_min: Decimal = ZERO
    charges_max: Decimal = ZERO
    purchases: Decimal = ZERO
    payments: int = 0
    answered: int = 0
    indeterminate: int = 0


@dataclass
class OracleReport:
    """The verdict: ``ok``, the violations (each says account, check, expected vs. found) and what was checked;
    ``str(report)`` is the whole of it in words, made to be an assertion message."""

    accounts: dict[str, AccountResult] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    pending_holds: int = 0  # open holds not yet past their TTL: the verdict waits for them
    requests: int = 0
    served: int = 0
    payments: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No violation, nothing pending, and something was checked (an empty run proves nothing)."""
        checked = self.requests > 0 or any(a.payments for a in self.accounts.values())
        checked = checked and bool(self.accounts)
        return not self.violations and not self.pending_holds and checked

    def assert_ok(self) -> OracleReport:
        """Raise ``AssertionError`` with the whole verdict in words unless ``ok``; return the report otherwise."""
        if not self.ok:
            raise AssertionError(str(self))
        return self

    def __str__(self) -> str:
        indeterminate = sum(a.indeterminate for a in self.accounts.values())
        head = (
            f"money oracle: {len(self.accounts)} accounts, {self.requests} requests ({indeterminate} indeterminate), "
            f"{self.served} upstream completions, {self.payments} payments"
        )
        if self.ok:
            lines = [head + ": every account's books match what was served and paid"]
        elif not self.violations and self.pending_holds:
            lines = [head + f": INCONCLUSIVE, {self.pending_holds} holds still open before their TTL"]
        elif not self.violations:
            lines = [head + ": NOTHING CHECKED (no account in the books, or no request and no payment)"]
        else:
            lines = [head + f": {len(self.violations)} violation(s)"]
            lines += [f"  {v}" for v in self.violations[:40]]
            if len(self.violations) > 40:
                lines.append(f"  ... and {len(self.violations) - 40} more")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


Price = Callable[[Any], Decimal]
Attribute = Callable[[Any], "tuple[str, str] | None"]


def check_money(
    *,
    outcomes: Iterable[Outcome] = (),
    served: Iterable[Any] = (),
    payments: Iterable[Payment | Mapping[str, Any]] = (),
    books: Iterable[Books] | None = None,
    before: Mapping[str, AccountBooks] | None = None,
    after: Mapping[str, AccountBooks] | None = None,
    pricing: Pricing | Price | None = None,
    price: Price | None = None,
    attribute: Attribute = by_marker,
    tolerance: Decimal = ZERO,
    payment_account: str = "account_id",
    payment_credits: str | Callable[[Mapping[str, Any]], Decimal] = "credits",
) -> OracleReport:
    """Compare each account's books with what the upstream served, what Stripe paid and what clients saw.

    Args:
        outcomes: what each client saw (``Outcome``s, or ``fire``'s shots as they are).
        served: what the upstream served: the fake provider's ``state.served`` as it is (``ServedCompletion``),
            ``Served`` or ``/_fake/served`` rows.
        payments: what Stripe completed: the fake Stripe's ``state.payments`` as it is, or ``Payment``s.
        books: the books as ``Books`` (the gateway's ``books_from_audit``); or else
        before: every account's ``AccountBooks`` before the run (e.g. ``LedgerCheck.books(url)``), and
        after: the same after it.
        pricing: ``Pricing`` (the gateway's charging rules) or any price callable; or else
        price: ``served -> Decimal``, the credits the app must charge for one served completion (needed once
            anything was served).
        attribute: ``served -> (rid, account)`` or ``None``; default: the marker in the prompt.
        tolerance: how much more than the price each account may be charged in total (never less).
        payment_account: the Checkout Session metadata key naming the account, for raw payment rows.
        payment_credits: the metadata key of the credits bought, or ``row -> Decimal``, for raw payment rows.
    """
    price_of = _price(pricing, price)
    if books is None:
        if before is None or after is None:
            raise TypeError("check_money needs the books: books=[Books…], or before= and after= snapshots")
        books = Books.between(before, after)
    elif before is not None or after is not None:
        raise TypeError("check_money takes books= or before=/after=, not both")
    report = OracleReport()
    ledger = {b.account: b for b in books}
    results = {account: AccountResult(account) for account in ledger}
    report.accounts = results
    add = report.violations.append

    by_rid: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    unattributed = 0
    for s in served:
        report.served += 1
        found = attribute(s)
        if found is None:
            unattributed += 1
            continue
        by_rid[str(found[0])].append((str(found[1]), s))
    if unattributed:
        report.notes.append(f"{unattributed} upstream completions name no request (no marker: not this run's traffic)")

    seen: set[str] = set()
    for o in outcomes:
        report.requests += 1
        seen.add(o.rid)
        result = results.get(o.account)
        if result is None:
            detail = (
                f"request {o.rid} spent an account the books do not list"
                if o.account
                else f"request {o.rid} names no account (fire(…, account=…) or Outcome(rid, account, status))"
            )
            add(Violation(o.account or "?", "unknown-account", detail))
            continue
        rows = by_rid.get(o.rid, [])
        for account, _ in rows:
            if account != o.account:
                add(Violation(o.account, "attribution", f"request {o.rid} reached the upstream for {account}"))
        # The upstream call streams as the client's did when the app passes streaming through (the gateway);
        # an app that streams on one side only is matched on the request id alone.
        matching = [s for _, s in rows if bool(_field(s, "stream")) == o.stream] or [s for _, s in rows]
        if len(matching) > 1:
            report.notes.append(f"request {o.rid}: the upstream served it {len(matching)} times")
        cost = price_of(matching[-1]) if matching else ZERO
        if o.definite:
            if o.answered:
                result.answered += 1
                if not matching:
                    add(
                        Violation(
                            o.account, "answered-unserved", f"request {o.rid} got {o.status} but was never served"
                        )
                    )
                result.charges_min += cost
                result.charges_max += cost
        else:
            result.indeterminate += 1
            result.charges_max += cost

    for rid, attributed in by_rid.items():
        if rid in seen:
            continue
        account, last = attributed[-1]
        if account in results:  # served, but the client never reported it: indeterminate
            results[account].indeterminate += 1
            results[account].charges_max += price_of(last)
            report.notes.append(f"request {rid} was served but no client outcome was recorded")

    paid: dict[str, Payment] = {}
    outside = 0
    for row in payments:
        p = (
            row
            if isinstance(row, Payment)
            else Payment.from_json(row, account=payment_account, credits=payment_credits)
        )
        report.payments += 1
        if p.id in paid:
            add(Violation(p.account, "payment-record", f"Stripe recorded payment {p.id} twice"))
            continue
        paid[p.id] = p
        if p.account in results:
            results[p.account].purchases += p.credits
            results[p.account].payments += 1
        else:
            outside += 1
    if outside:  # another run's, or an account the caller left out: not this verdict's business
        report.notes.append(f"{outside} payments are for accounts the books do not list (not checked)")

    for account, b in sorted(ledger.items()):
        _judge(b, results[account], tolerance, add)
        report.pending_holds += b.open_holds - b.stale_holds
    return report


def _price(pricing: Pricing | Price | None, price: Price | None) -> Price:
    if pricing is not None and price is not None:
        raise TypeError("check_money takes one price: price= or pricing=, not both")
    chosen = pricing if pricing is not None else price
    if chosen is not None:
        return chosen

    def missing(served: Any) -> Decimal:
        raise TypeError(
            "check_money needs a price for what was served: price=lambda served: Decimal(…) (the credits one "
            "served completion costs, e.g. its prompt_tokens + completion_tokens) or pricing=Pricing(…)"
        )

    return missing


def _judge(b: Books, r: AccountResult, tolerance: Decimal, add: Callable[[Violation], None]) -> None:
    """Every invariant of one account's books against what the oracle expects of it."""
    account = b.account
    if b.purchases is not None and b.purchases != r.purchases:
        add(
            Violation(
                account,
                "purchases",
                f"the books credited {b.purchases} for purchases; Stripe completed {r.payments} payments "
                f"worth {r.purchases}",
            )
        )
    if b.charges is not None and not r.charges_min <= b.charges <= r.charges_max + tolerance:
        high = r.charges_max + tolerance
        expected = str(r.charges_min) if r.charges_min == high else f"{r.charges_min}..{high}"
        add(
            Violation(
                account,
                "charges",
                f"the books charged {b.charges} for usage; the upstream served {expected} "
                f"({r.answered} answered, {r.indeterminate} indeterminate requests)",
            )
        )
    low = b.initial + r.purchases - r.charges_max - tolerance
    high = b.initial + r.purchases - r.charges_min
    settled = b.final + b.open_held
    if not low <= settled <= high:
        expected = str(low) if low == high else f"{low}..{high}"
        held = f" (+{b.open_held} held)" if b.open_held else ""
        add(
            Violation(
                account,
                "balance",
                f"final balance {b.final}{held} but initial {b.initial} + purchases {r.purchases} "
                f"- charges gives {expected}",
            )
        )
    _judge_entries(b, add)
    if b.stale_holds:
        add(Violation(account, "stale-hold", f"{b.stale_holds} holds still open after their TTL"))


def _judge_entries(b: Books, add: Callable[[Violation], None]) -> None:
    """Never below zero (the balances, and every point of the entries in order); balance = sum of entries."""
    lowest, after_entry = _lowest(b.entries or ())
    if lowest < 0:
        add(
            Violation(
                b.account,
                "negative-balance",
                f"the entries take the balance to {lowest} at entry {after_entry}; it must never go below 0",
            )
        )
    elif min(b.initial, b.final) < 0:
        add(Violation(b.account, "negative-balance", f"balance {min(b.initial, b.final)}; it must never go below 0"))
    if b.entries is not None:
        total = sum((amount for _, amount in b.entries), ZERO)
        if total != b.final:
            add(
                Violation(
                    b.account,
                    "entries",
                    f"balance {b.final} but its {len(b.entries)} entries sum to {total}; "
                    f"every balance change must be one entry",
                )
            )


def _lowest(entries: Sequence[tuple[str, Decimal]]) -> tuple[Decimal, str | None]:
    running, lowest, where = ZERO, ZERO, None
    for entry, amount in entries:
        running += amount
        if running < lowest:
            lowest, where = running, entry
    return lowest, where


def books_from_audit(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Books]:
    """Books from two ``GET /admin/ledger/audit?account_id=…`` answers: ``before`` the run, and ``after`` it with
    ``since_entry`` = ``before["last_entry_id"]`` (what was held before counts as part of the initial balance)."""
    initial = {str(b["account_id"]): Decimal(b["balance"]) + Decimal(b["open_held"]) for b in before["balances"]}
    books = []
    for b in after["balances"]:
        since = b["since_entry"]
        books.append(
            Books(
                account=str(b["account_id"]),
                initial=initial[str(b["account_id"])],
                final=Decimal(b["balance"]),
                purchases=Decimal(since.get("purchase", "0")),
                charges=-Decimal(since.get("api_usage", "0")),
                open_held=Decimal(b["open_held"]),
                open_holds=int(b["open_holds"]),
                stale_holds=int(b["stale_holds"]),
            )
        )
    return books
