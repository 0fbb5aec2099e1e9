"""A ready-made check of a ledger described by its table and column names, for any app's database.

``LedgerCheck(accounts="wallets", balance="balance", entries="entries", entry_account="wallet_id",
entry_amount="amount")`` is both:

- a ``database_check`` (return it from that fixture): after each test it reads the test's database and fails the
  test, in one message, when a balance is below zero, when a balance differs from the sum of its account's entries,
  when the entries taken in order ever take a balance below zero, or when an entry names no account;
- a books reader for the money oracle: ``books(url)`` (or ``await read(url)``) is every account's balance and
  entries, which ``check_money(before=…, after=…)`` compares with what the fakes recorded.

Entries are signed (credits positive, debits negative) and every change of a balance is one entry, the opening
balance too; without an ``entries`` table only the balances are checked. ``scale`` turns a stored integer into
credits (``Decimal("0.01")`` for hundredths). Every name is checked against the database first: a wrong one is
reported as one line naming it, the argument that gave it and what the database has.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from creditgate_harness.oracle import AccountBooks
from creditgate_harness.services.base import run_sync

__all__ = ["LedgerCheck", "LedgerError"]


class LedgerError(ValueError):
    """A table or column the ``LedgerCheck`` names is not in the database (the message names it and the fix)."""


@dataclass(frozen=True)
class LedgerCheck:
    """A ledger by table and column names: ``accounts`` (one row per account: ``id``, ``balance``) and optionally
    ``entries`` (one row per balance change: ``entry_id`` for their order, ``entry_account``, ``entry_amount``).

    Call it with an async SQLAlchemy URL (SQLite or Postgres, as ``database_url`` hands out): ``None`` when the
    books hold, else what is wrong — the ``database_check`` fixture's contract."""

    accounts: str
    id: str = "id"
    balance: str = "balance"
    entries: str | None = None
    entry_account: str | None = None
    entry_amount: str = "amount"
    entry_id: str = "id"
    scale: Decimal = Decimal(1)
    limit: int = 20  # violations listed in a message

    def __post_init__(self) -> None:
        if self.entries is not None and self.entry_account is None:
            raise LedgerError(
                f"LedgerCheck: entries={self.entries!r} needs entry_account= (the column of {self.entries!r} "
                f"that holds the account's {self.id!r})"
            )

    def __call__(self, url: str) -> str | None:
        """The ``database_check``: ``None`` when every invariant holds, else one message listing what does not."""
        try:
            problems = self.problems(url)
        except LedgerError as exc:
            return str(exc)
        if not problems:
            return None
        shown = problems[: self.limit]
        more = [f"  ... and {len(problems) - self.limit} more"] if len(problems) > self.limit else []
        return "\n".join(
            [f"ledger check ({self.accounts}): {len(problems)} problem(s)"] + [f"  {p}" for p in shown] + more
        )

    def problems(self, url: str) -> list[str]:
        """Every broken invariant, one line each (reads the database once)."""
        books, orphans = run_sync(self._read(url))
        found = [
            f"entry {entry} names account {account}, which {self.accounts} does not have" for entry, account in orphans
        ]
        for account, b in books.items():
            if b.balance < 0:
                found.append(f"account {account}: balance {b.balance}; it must never go below 0")
            if b.entries is None:
                continue
            running, lowest, where = Decimal(0), Decimal(0), None
            for entry, amount in b.entries:
                running += amount
                if running < lowest:
                    lowest, where = running, entry
            if lowest < 0 and b.balance >= 0:
                found.append(
                    f"account {account}: its entries take the balance to {lowest} at entry {where}; "
                    f"it must never go below 0"
                )
            if running != b.balance:
                found.append(
                    f"account {account}: balance {b.balance} but its {len(b.entries)} entries sum to {running}"
                )
        return found

    def books(self, url: str) -> dict[str, AccountBooks]:
        """Every account's balance and entries, for ``check_money(before=…, after=…)`` (from sync or async code)."""
        read: tuple[dict[str, AccountBooks], list[tuple[str, str]]] = run_sync(self._read(url))
        return read[0]

    async def read(self, url: str) -> dict[str, AccountBooks]:
        """``books(url)`` from async code, on the running loop."""
        books, _ = await self._read(url)
        return books

    async def _read(self, url: str) -> tuple[dict[str, AccountBooks], list[tuple[str, str]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                tables: dict[str, list[str]] = await conn.run_sync(_columns)
                self._validate(tables)
                accounts = sa.table(self.accounts, sa.column(self.id), sa.column(self.balance))
                rows = (await conn.execute(sa.select(accounts.c[self.id], accounts.c[self.balance]))).all()
                entries: dict[str, list[tuple[str, Decimal]]] | None = None
                orphans: list[tuple[str, str]] = []
                if self.entries is not None:
                    assert self.entry_account is not None
                    table = sa.table(
                        self.entries,
                        sa.column(self.entry_id),
                        sa.column(self.entry_account),
                        sa.column(self.entry_amount),
                    )
                    query = sa.select(
                        table.c[self.entry_id], table.c[self.entry_account], table.c[self.entry_amount]
                    ).order_by(table.c[self.entry_id])
                    entries = {str(account): [] for account, _ in rows}
                    for entry, account, amount in (await conn.execute(query)).all():
                        if str(account) in entries:
                            entries[str(account)].append((str(entry), self._credits(amount)))
                        else:
                            orphans.append((str(entry), str(account)))
        finally:
            await engine.dispose()
        books = {
            str(account): AccountBooks(
                str(account),
                self._credits(balance),
                tuple(entries[str(account)]) if entries is not None else None,
            )
            for account, balance in rows
        }
        return books, orphans

    def _credits(self, value: Any) -> Decimal:
        return Decimal(str(value)) * self.scale

    def _validate(self, tables: dict[str, list[str]]) -> None:
        wanted = [(self.accounts, "accounts", [(self.id, "id"), (self.balance, "balance")])]
        if self.entries is not None:
            assert self.entry_account is not None
            columns = [
                (self.entry_id, "entry_id"),
                (self.entry_account, "entry_account"),
                (self.entry_amount, "entry_amount"),
            ]
            wanted.append((self.entries, "entries", columns))
        for table, argument, columns in wanted:
            if table not in tables:
                raise LedgerError(
                    f"LedgerCheck: {argument}={table!r} is not a table of this database; "
                    f"it has: {', '.join(sorted(tables)) or 'no tables'}"
                )
            for column, name in columns:
                if column not in tables[table]:
                    raise LedgerError(
                        f"LedgerCheck: {name}={column!r} is not a column of {table!r}; "
                        f"it has: {', '.join(tables[table])}"
                    )


def _columns(connection: Any) -> dict[str, list[str]]:
    inspector = sa.inspect(connection)
    return {name: [c["name"] for c in inspector.get_columns(name)] for name in inspector.get_table_names()}
