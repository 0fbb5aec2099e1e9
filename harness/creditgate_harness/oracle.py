"""A money oracle independent of the ledger (Jepsen's bank checker is the model).

The auditor checks the ledger against itself. The oracle checks it against what *happened*, as recorded outside
the gateway: what the upstream served (the fake provider's ``served``), what Stripe completed (the fake Stripe's
``payments``) and what each client saw. From those alone it computes, per account, what the books must say, and
compares with what they do say:

- **charges** = the catalog price of what the upstream served for that account's answered requests, priced by the
  gateway's documented rules (README, "Charging rules"): the upstream's usage when it sent one; else the prompt
  estimate plus an estimate of the text delivered (nothing when no text was delivered); rounded up to the credit
  increment — and *not* capped at the hold: the hold is the gateway's reservation, not a price, so an oracle that
  capped at it would repeat the rule that let unheld prompt parts ride free (issue 26). A request that
  failed (402, 429, any other 4xx or 5xx) costs 0. A request without a definite outcome (no answer, a stream
  broken off on the client side — e.g. the worker was killed) may have been charged or not: it widens the allowed
  range by its price, as Jepsen treats indeterminate operations;
- **purchases** = the credits of every payment Stripe completed for that account, each exactly once;
- **final balance** (plus what is still held) = initial + purchases − charges;
- **no open hold after its TTL**.

Requests are attributed by a marker the load generator puts in each prompt (``marker(rid, account)``) and the
upstream therefore sees: ``[cg-load rid=<id> acct=<account>]``. Pure functions: no I/O, no gateway import.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

ZERO = Decimal("0.00")
CENT = Decimal("0.01")
_MARKER = re.compile(r"\[cg-load rid=([A-Za-z0-9_-]+) acct=([A-Za-z0-9_-]+)\]")


def marker(rid: str, account: str | int) -> str:
    """What the load generator puts in a prompt so the upstream's record names the request and the account."""
    return f"[cg-load rid={rid} acct={account}]"


def parse_marker(texts: Iterable[str]) -> tuple[str, str] | None:
    """``(rid, account)`` from a prompt's texts, or ``None`` for traffic that is not the load generator's."""
    for text in texts:
        if found := _MARKER.search(text):
            return found.group(1), found.group(2)
    return None


def estimate_tokens(texts: list[str]) -> int:
    """The gateway's documented estimate (catalog/pricing.py): one token per 3 UTF-8 bytes, plus one per text,
    4 per message and 3 per request — deliberately high, so a hold always covers the prompt."""
    return sum(len(t.encode()) // 3 + 1 for t in texts) + 4 * len(texts) + 3


@dataclass(frozen=True)
class Pricing:
    """The catalog's USD prices per 1,000 tokens and the gateway's money settings (margin, $ per credit, increment)."""

    models: Mapping[str, tuple[Decimal, Decimal]]  # model id → (input per 1K, output per 1K)
    margin: Decimal = Decimal("1.5")
    credit_value_usd: Decimal = Decimal("0.01")
    increment: Decimal = Decimal("0.1")

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
    """One completion the upstream served (the fake provider's ``GET /_fake/served`` rows)."""

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
        return self.status != 0 and (self.complete or not 200 <= self.status < 300)

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Payment:
    """One payment Stripe completed (the fake Stripe's ``GET /_test/payments``; metadata as the gateway set it)."""

    id: str
    account: str
    credits: Decimal

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Payment:
        metadata = row.get("metadata") or {}
        account = metadata.get("account_id") or row.get("client_reference_id")
        return cls(str(row["checkout_session"]), str(account), Decimal(str(metadata.get("credits", "0"))))


@dataclass(frozen=True)
class Books:
    """What the gateway says about one account: before and after the run, and the run's entries by type."""

    account: str
    initial: Decimal
    final: Decimal
    purchases: Decimal  # purchase entries in the run
    charges: Decimal  # api_usage entries in the run, as a positive amount
    open_held: Decimal = ZERO  # still held at the final read (not yet expired)
    open_holds: int = 0
    stale_holds: int = 0  # open past their expiry


@dataclass(frozen=True)
class Violation:
    account: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] account {self.account}: {self.detail}"


@dataclass
class AccountResult:
    account: str
    charges_min: Decimal = ZERO
    charges_max: Decimal = ZERO
    purchases: Decimal = ZERO
    payments: int = 0
    answered: int = 0
    indeterminate: int = 0


@dataclass
class OracleReport:
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
        return not self.violations and not self.pending_holds and self.requests > 0 and bool(self.accounts)

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
            lines = [head + ": NOTHING CHECKED (no request or no account)"]
        else:
            lines = [head + f": {len(self.violations)} violation(s)"]
            lines += [f"  {v}" for v in self.violations[:40]]
            if len(self.violations) > 40:
                lines.append(f"  ... and {len(self.violations) - 40} more")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_money(
    *,
    outcomes: Iterable[Outcome],
    served: Iterable[Served],
    payments: Iterable[Payment],
    books: Iterable[Books],
    pricing: Pricing,
) -> OracleReport:
    """Compare each account's books with what the upstream served, what Stripe paid and what clients saw."""
    report = OracleReport()
    ledger = {b.account: b for b in books}
    results = {account: AccountResult(account) for account in ledger}
    report.accounts = results
    add = report.violations.append

    by_rid: dict[str, list[Served]] = defaultdict(list)
    unmarked = 0
    for s in served:
        report.served += 1
        found = parse_marker(s.texts)
        if found is None:
            unmarked += 1
            continue
        by_rid[found[0]].append(s)
    if unmarked:
        report.notes.append(f"{unmarked} upstream completions carry no load marker (not this run's traffic)")

    seen: set[str] = set()
    for o in outcomes:
        report.requests += 1
        seen.add(o.rid)
        result = results.get(o.account)
        if result is None:
            add(Violation(o.account, "unknown-account", f"request {o.rid} spent an account the books do not list"))
            continue
        matching = [s for s in by_rid.get(o.rid, []) if s.stream == o.stream]
        for s in by_rid.get(o.rid, []):
            if (marked := parse_marker(s.texts)) is not None and marked[1] != o.account:
                add(Violation(o.account, "attribution", f"request {o.rid} reached the upstream for {marked[1]}"))
        if len(matching) > 1:
            report.notes.append(f"request {o.rid}: the upstream served it {len(matching)} times")
        price = matching[-1].price(pricing) if matching else ZERO
        if o.definite:
            if o.answered:
                result.answered += 1
                if not matching:
                    add(
                        Violation(
                            o.account, "answered-unserved", f"request {o.rid} got {o.status} but was never served"
                        )
                    )
                result.charges_min += price
                result.charges_max += price
        else:
            result.indeterminate += 1
            result.charges_max += price

    for rid, rows in by_rid.items():
        if rid in seen:
            continue
        account = parse_marker(rows[-1].texts)[1]  # type: ignore[index]  # every row here carries a marker
        if account in results:  # served, but the client never reported it: indeterminate
            results[account].indeterminate += 1
            results[account].charges_max += rows[-1].price(pricing)
            report.notes.append(f"request {rid} was served but no client outcome was recorded")

    paid: dict[str, Payment] = {}
    for p in payments:
        report.payments += 1
        if p.id in paid:
            add(Violation(p.account, "payment-record", f"Stripe recorded payment {p.id} twice"))
            continue
        paid[p.id] = p
        if p.account in results:
            results[p.account].purchases += p.credits
            results[p.account].payments += 1

    for account, b in sorted(ledger.items()):
        r = results[account]
        if b.purchases != r.purchases:
            add(
                Violation(
                    account,
                    "purchases",
                    f"the ledger credited {b.purchases} for purchases; Stripe completed {r.payments} payments "
                    f"worth {r.purchases}",
                )
            )
        if not r.charges_min <= b.charges <= r.charges_max:
            expected = str(r.charges_min) if r.charges_min == r.charges_max else f"{r.charges_min}..{r.charges_max}"
            add(
                Violation(
                    account,
                    "charges",
                    f"the ledger charged {b.charges} for usage; the upstream served {expected} "
                    f"({r.answered} answered, {r.indeterminate} indeterminate requests)",
                )
            )
        low = b.initial + r.purchases - r.charges_max
        high = b.initial + r.purchases - r.charges_min
        settled = b.final + b.open_held
        if not low <= settled <= high:
            expected = str(low) if low == high else f"{low}..{high}"
            add(
                Violation(
                    account,
                    "balance",
                    f"final balance {b.final} (+{b.open_held} held) but initial {b.initial} + purchases {r.purchases} "
                    f"- charges gives {expected}",
                )
            )
        if b.stale_holds:
            add(Violation(account, "stale-hold", f"{b.stale_holds} holds still open after their TTL"))
        report.pending_holds += b.open_holds - b.stale_holds
    return report


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
