"""creditgate_harness.ledger: LedgerCheck reads a ledger described by names, on SQLite and Postgres, and names
every broken invariant (and every wrong name) in one message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from creditgate_harness import AccountBooks, LedgerCheck, LedgerError
from creditgate_harness.services import Service
from creditgate_harness.services.base import run_sync
from creditgate_harness.services.postgres import create_database, drop_database

D = Decimal
LEDGER = LedgerCheck(accounts="wallets", entries="entries", entry_account="wallet_id")
SCHEMA = [
    "CREATE TABLE wallets (id INTEGER PRIMARY KEY, owner VARCHAR(20), balance INTEGER NOT NULL)",
    "CREATE TABLE entries (id INTEGER PRIMARY KEY, wallet_id INTEGER NOT NULL, amount INTEGER NOT NULL)",
]


def execute(url: str, *statements: str) -> None:
    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.execute(sa.text(statement))
        finally:
            await engine.dispose()

    run_sync(main())


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with a wallets/entries ledger: wallet 1 (100 = +100), wallet 2 (30 = +50 −20)."""
    if request.param == "sqlite":
        found = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        drop = None
    else:
        service: Service = request.getfixturevalue("postgres_service")
        name = f"ledger_{uuid.uuid4().hex[:10]}"
        found = create_database(service.url, name)

        def drop() -> None:
            drop_database(service.url, name)

    execute(
        found,
        *SCHEMA,
        "INSERT INTO wallets VALUES (1, 'ada', 100), (2, 'bo', 30)",
        "INSERT INTO entries VALUES (1, 1, 100), (2, 2, 50), (3, 2, -20)",
    )
    yield found
    if drop is not None:
        drop()


def test_books_in_order_pass_and_read_as_the_oracle_wants(url: str) -> None:
    assert LEDGER(url) is None
    assert LEDGER.books(url) == {
        "1": AccountBooks("1", D(100), (("1", D(100)),)),
        "2": AccountBooks("2", D(30), (("2", D(50)), ("3", D(-20)))),
    }


async def test_books_read_from_async_code_too(url: str) -> None:
    assert (await LEDGER.read(url))["2"].balance == D(30)


@pytest.mark.parametrize(
    ("statements", "problem"),
    [
        (["UPDATE wallets SET balance = 25 WHERE id = 2"], "account 2: balance 25 but its 2 entries sum to 30"),
        (
            ["UPDATE wallets SET balance = -10 WHERE id = 2", "INSERT INTO entries VALUES (4, 2, -40)"],
            "account 2: balance -10; it must never go below 0",
        ),
        (  # a debit landed before the credit that covered it: the balance was negative in between
            ["UPDATE entries SET id = 9 WHERE id = 2"],
            "account 2: its entries take the balance to -20 at entry 3; it must never go below 0",
        ),
        (["INSERT INTO entries VALUES (4, 7, 5)"], "entry 4 names account 7, which wallets does not have"),
    ],
    ids=["balance-is-not-its-entries", "negative-balance", "negative-on-the-way", "orphan-entry"],
)
def test_each_broken_invariant_is_named(url: str, statements: list[str], problem: str) -> None:
    execute(url, *statements)

    message = LEDGER(url)

    assert message is not None
    assert problem in message, message
    assert message.startswith("ledger check (wallets): 1 problem(s)")


def test_a_ledger_without_entries_checks_balances(url: str) -> None:
    balances = LedgerCheck(accounts="wallets", scale=D("0.01"))
    assert balances.books(url)["1"] == AccountBooks("1", D("1.00"), None)
    execute(url, "UPDATE wallets SET balance = -1 WHERE id = 1")
    assert balances(url) == "ledger check (wallets): 1 problem(s)\n  account 1: balance -0.01; it must never go below 0"


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            LedgerCheck(accounts="wallet"),
            "LedgerCheck: accounts='wallet' is not a table of this database; it has: entries, wallets",
        ),
        (
            LedgerCheck(accounts="wallets", balance="credits"),
            "LedgerCheck: balance='credits' is not a column of 'wallets'; it has: id, owner, balance",
        ),
        (
            LedgerCheck(accounts="wallets", entries="entries", entry_account="account_id"),
            "LedgerCheck: entry_account='account_id' is not a column of 'entries'; it has: id, wallet_id, amount",
        ),
    ],
    ids=["table", "column", "entry-column"],
)
def test_a_wrong_name_is_one_line_naming_it_and_what_there_is(url: str, check: LedgerCheck, message: str) -> None:
    assert check(url) == message  # as a database_check: the test fails with this line
    with pytest.raises(LedgerError, match=r"^LedgerCheck: "):
        check.books(url)


def test_entries_need_their_account_column() -> None:
    with pytest.raises(LedgerError, match="entries='charges' needs entry_account="):
        LedgerCheck(accounts="wallets", entries="charges")


def test_many_problems_are_listed_up_to_the_limit(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'many.db'}"
    rows = ", ".join(f"({i}, 'x', -1)" for i in range(1, 31))
    execute(url, *SCHEMA, f"INSERT INTO wallets VALUES {rows}")
    message = LedgerCheck(accounts="wallets", limit=3)(url)
    assert message is not None
    assert message.splitlines()[0] == "ledger check (wallets): 30 problem(s)"
    assert message.splitlines()[-1] == "  ... and 27 more"
