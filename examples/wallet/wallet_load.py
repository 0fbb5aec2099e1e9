"""The wallet app as the harness's load runner sees it (creditgate_harness.load's ``LoadAdapter``).

    python -m creditgate_harness.load --adapter wallet_load:WalletAdapter --target http://127.0.0.1:8000 \\
        --fake-upstream http://127.0.0.1:9100 --fake-stripe http://127.0.0.1:9200 --webhook-secret whsec_…

Accounts are wallets opened through the API (``POST /wallets`` with a balance in tokens); the app has no keys, so a
client is a wallet id. The ``--members`` clients share one wallet (the hot row). The paid request is
``POST /wallets/{id}/ask`` with the oracle's marker in the question; a top-up is ``POST /wallets/{id}/top-up``, and
Stripe's events go to ``/stripe/webhook`` (the Checkout Session's metadata: ``wallet_id``, ``tokens``). The price of
an answer is its total tokens, as the app charges.

The books are read through the API (``GET /wallets/{id}``) by default: that is all ``--target`` needs (a deployed
app, no database access), and the oracle then checks each balance against what was served and paid, and that none
went below zero. With ``--option database_url=…`` (the app's database, an async SQLAlchemy URL) they are read from
its ``wallets`` and ``entries`` tables with the harness's ``LedgerCheck`` instead: the oracle also checks the
charges and the top-ups apart and that each balance is the sum of its entries, and the same check audits the whole
ledger. A wallet charges after the answer and holds nothing, so the books are final as soon as the load stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from creditgate_harness.ledger import LedgerCheck
from creditgate_harness.load import Accounts, Call, Client, Scenario, total_tokens
from creditgate_harness.oracle import AccountBooks, Books

LEDGER = LedgerCheck(accounts="wallets", entries="entries", entry_account="wallet_id", entry_amount="amount")
Snapshot = dict[str, dict[str, Any]]  # account → {"balance": "…", "entries": [[id, "amount"], …] | None}


@dataclass(frozen=True)
class LedgerVerdict:
    """``LedgerCheck``'s answer on the whole database."""

    problems: str | None

    @property
    def ok(self) -> bool:
        return self.problems is None

    def __str__(self) -> str:
        return self.problems or "ledger check (wallets, entries): every balance is its entries' sum, none below zero"


class WalletAdapter:
    """The wallet app at ``target``. ``balance``: each wallet's opening tokens; ``top_up_cents``: each top-up (Stripe's
    minimum is 50); ``database_url``: read the books from the app's database (else through its API)."""

    scenarios: Sequence[Scenario] = (Scenario("ask"), Scenario("shared ask", shared=True))
    webhook_path: str | None = "/stripe/webhook"
    payment_account = "wallet_id"
    payment_credits = "tokens"

    def __init__(self, target: str, balance: str = "3000", top_up_cents: str = "50", database_url: str = "") -> None:
        self.target, self.balance, self.top_up_cents = target.rstrip("/"), int(balance), int(top_up_cents)
        self.database_url = database_url
        self.audits = bool(database_url)

    def request(self, scenario: str, client: Client, prompt: str) -> Call:
        return Call(f"/wallets/{client.account}/ask", {"question": f"load {prompt}"})

    def checkout(self, client: Client) -> Call | None:
        return Call(f"/wallets/{client.account}/top-up", {"cents": self.top_up_cents})

    def provision(self, run_id: str, *, users: int, members: int) -> Accounts:
        with httpx.Client(base_url=self.target, timeout=30) as http:

            def wallet(owner: str) -> str:
                response = http.post("/wallets", json={"owner": owner, "balance": self.balance})
                response.raise_for_status()
                return str(response.json()["id"])

            own = [Client(wallet(f"load-{run_id}-u{i}")) for i in range(users)]
            shared = [Client(wallet(f"load-{run_id}-shared"), shared=True)] * members if members else []
        return Accounts(run_id, own + shared, sorted({c.account for c in own + shared}, key=int))

    def snapshot(self, run: Accounts) -> Snapshot:
        if self.database_url:
            books = LEDGER.books(self.database_url)
            return {
                a: {"balance": str(books[a].balance), "entries": [[e, str(x)] for e, x in books[a].entries or ()]}
                for a in run.accounts
            }
        with httpx.Client(base_url=self.target, timeout=30) as http:
            return {
                a: {"balance": str(http.get(f"/wallets/{a}").raise_for_status().json()["balance"]), "entries": None}
                for a in run.accounts
            }

    def settle(self, run: Accounts, before: Snapshot) -> Snapshot:
        return self.snapshot(run)  # nothing is held: the books are final when the load stops

    def books(self, before: Snapshot, after: Snapshot) -> list[Books]:
        def read(snapshot: Snapshot) -> dict[str, AccountBooks]:
            return {
                account: AccountBooks(
                    account,
                    Decimal(row["balance"]),
                    None if row["entries"] is None else tuple((str(e), Decimal(x)) for e, x in row["entries"]),
                )
                for account, row in snapshot.items()
            }

        return Books.between(read(before), read(after))

    def price(self, served: Any) -> Decimal:
        return total_tokens(served)

    def audit(self, run: Accounts) -> tuple[LedgerVerdict | None, str]:
        if not self.database_url:
            return None, "none: the books were read through the API (--option database_url=… audits the ledger)"
        return LedgerVerdict(LEDGER(self.database_url)), "LedgerCheck on the app's database"

    def teardown(self, run: Accounts) -> str:
        return f"the run's {len(run.accounts)} wallets stay (the app cannot close one)"
