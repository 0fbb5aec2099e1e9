"""The ledger invariants, checked read-only for ``GET /admin/ledger/audit`` (whole ledger or some accounts).

The same invariants as the test auditor (``creditgate/testing/auditor.py``), written again here so a deployed
gateway can answer without the test harness; a unit test runs both on the same corrupted ledgers and expects the
same findings:

- ``balance == sum(ledger amounts)`` and ``balance >= 0``;
- each entry's ``balance_after`` equals the running sum up to it;
- every hold has exactly one ``hold`` entry; a closed hold exactly one ``release`` of its amount, an open hold none;
  a hold's ``api_usage`` entries add up to what it charged;
- no hold is still open past its expiry (plus ``grace``);
- no idempotency key applied twice.

Per account it also reports what a money oracle needs: the balance, its open holds (and how many are past their
expiry), the last entry id, and the amounts by entry type after a given entry id.
"""

# ruff: noqa: S608 - the SQL is built from constant fragments only; account ids are bound parameters
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from creditgate.money import from_hundredths


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    subject: str
    detail: str


@dataclass(frozen=True, slots=True)
class AccountFigures:
    account_id: int
    balance: int  # hundredths
    open_holds: int
    open_held: int  # hundredths
    stale_holds: int  # open past expiry + grace
    last_open_expiry: datetime | None
    since: dict[str, int]  # entry type → hundredths, entries with id > since_entry


@dataclass
class LedgerAudit:
    accounts: int = 0
    entries: int = 0
    holds: int = 0
    last_entry_id: int = 0
    findings: list[Finding] = field(default_factory=list)
    figures: list[AccountFigures] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _c(units: int) -> str:
    return str(from_hundredths(int(units)))


def _aware(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Scope:
    """SQL fragments restricting each query to some accounts (or none: the whole ledger)."""

    def __init__(self, account_ids: Sequence[int] | None) -> None:
        self.ids = list(account_ids) if account_ids is not None else None

    def where(self, column: str, *, prefix: str = "WHERE") -> str:
        return "" if self.ids is None else f" {prefix} {column} IN :ids"

    def run(self, conn: AsyncConnection, sql: str, **params: Any) -> Any:
        statement = text(sql)
        if self.ids is not None and ":ids" in sql:
            statement = statement.bindparams(bindparam("ids", expanding=True))
            params["ids"] = self.ids
        return conn.execute(statement, params)


async def _read_only(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET TRANSACTION READ ONLY"))


async def audit_ledger(
    engine: AsyncEngine,
    *,
    account_ids: Sequence[int] | None = None,
    since_entry: int = 0,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
) -> LedgerAudit:
    """Check the invariants on the whole ledger, or on ``account_ids`` only; never writes."""
    scope = _Scope(account_ids)
    report = LedgerAudit()
    add = report.findings.append
    now = now or datetime.now(UTC)
    async with engine.connect() as conn, conn.begin():
        await _read_only(conn)
        q = scope.run
        report.accounts = int((await q(conn, "SELECT count(*) FROM accounts" + scope.where("id"))).scalar_one())
        report.entries = int(
            (await q(conn, "SELECT count(*) FROM ledger_entries" + scope.where("account_id"))).scalar_one()
        )
        report.holds = int((await q(conn, "SELECT count(*) FROM holds" + scope.where("account_id"))).scalar_one())
        report.last_entry_id = int(
            (await q(conn, "SELECT COALESCE(MAX(id), 0) FROM ledger_entries" + scope.where("account_id"))).scalar_one()
        )

        rows = await q(
            conn,
            "SELECT a.id, a.balance, COALESCE(SUM(l.amount), 0) FROM accounts a "
            "LEFT JOIN ledger_entries l ON l.account_id = a.id"
            + scope.where("a.id")
            + " GROUP BY a.id, a.balance HAVING a.balance <> COALESCE(SUM(l.amount), 0) OR a.balance < 0",
        )
        for account_id, balance, total in rows:
            if balance < 0:
                add(Finding("negative-balance", f"account {account_id}", f"balance {_c(balance)}"))
            if balance != total:
                add(
                    Finding(
                        "balance-vs-ledger",
                        f"account {account_id}",
                        f"balance {_c(balance)} != ledger sum {_c(total)} (off by {_c(balance - total)})",
                    )
                )

        # The running sum in SQL (window function): only the breaks come back, the first per account.
        breaks = await q(
            conn,
            "SELECT id, account_id, balance_after, running FROM ("
            "SELECT id, account_id, balance_after, "
            "SUM(amount) OVER (PARTITION BY account_id ORDER BY id ROWS UNBOUNDED PRECEDING) AS running "
            "FROM ledger_entries" + scope.where("account_id") + ") r WHERE running <> balance_after ORDER BY id",
        )
        broken: set[int] = set()
        for entry_id, account_id, after, running in breaks:
            if account_id in broken:
                continue
            broken.add(account_id)
            add(
                Finding(
                    "running-balance",
                    f"entry {entry_id} (account {account_id})",
                    f"balance_after {_c(after)} but the entries so far sum to {_c(running)}",
                )
            )

        holds = await q(
            conn,
            "SELECT h.id, h.status, h.amount, h.charged, h.expires_at, "
            "SUM(CASE WHEN l.type = 'hold' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN l.type = 'hold' THEN -l.amount ELSE 0 END), "
            "SUM(CASE WHEN l.type = 'release' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN l.type = 'release' THEN l.amount ELSE 0 END), "
            "SUM(CASE WHEN l.type = 'api_usage' THEN -l.amount ELSE 0 END) "
            "FROM holds h LEFT JOIN ledger_entries l ON l.hold_id = h.id"
            + scope.where("h.account_id")
            + " GROUP BY h.id, h.status, h.amount, h.charged, h.expires_at",
        )
        for hold_id, status, amount, charged, expires, n_hold, held, n_rel, released, used in holds:
            subject = f"hold {hold_id} ({status})"
            if n_hold != 1 or held != amount:
                add(
                    Finding(
                        "hold-entry",
                        subject,
                        f"{n_hold} hold entries for {_c(held or 0)}, expected 1 for {_c(amount)}",
                    )
                )
            expected_releases = 0 if status == "open" else 1
            if n_rel != expected_releases or (n_rel and released != amount):
                add(Finding("hold-release", subject, f"{n_rel} release entries for {_c(released or 0)}"))
            if (used or 0) != charged:
                add(
                    Finding(
                        "hold-charge", subject, f"charged {_c(charged)} but api_usage entries total {_c(used or 0)}"
                    )
                )
            if status == "open" and _aware(expires) + grace < now:
                add(Finding("stale-hold", subject, f"still open {now - _aware(expires)} after expiry"))

        dupes = await q(
            conn,
            "SELECT idempotency_key, count(*) FROM ledger_entries WHERE idempotency_key IS NOT NULL"
            + scope.where("account_id", prefix="AND")
            + " GROUP BY idempotency_key HAVING count(*) > 1",
        )
        for key, count in dupes:
            add(Finding("idempotency", f"key {key!r}", f"applied {count} times"))

        if scope.ids is not None:
            report.figures = await _figures(conn, scope, since_entry=since_entry, grace=grace, now=now)
    return report


async def _figures(
    conn: AsyncConnection, scope: _Scope, *, since_entry: int, grace: timedelta, now: datetime
) -> list[AccountFigures]:
    balances = {
        int(a): int(b) for a, b in await scope.run(conn, "SELECT id, balance FROM accounts" + scope.where("id"))
    }
    opened: dict[int, list[tuple[int, datetime]]] = {a: [] for a in balances}
    for account_id, amount, expires in await scope.run(
        conn,
        "SELECT account_id, amount, expires_at FROM holds WHERE status = 'open'"
        + scope.where("account_id", prefix="AND"),
    ):
        opened[int(account_id)].append((int(amount), _aware(expires)))
    since: dict[int, dict[str, int]] = {a: {} for a in balances}
    for account_id, type_, total in await scope.run(
        conn,
        "SELECT account_id, type, SUM(amount) FROM ledger_entries WHERE id > :since"
        + scope.where("account_id", prefix="AND")
        + " GROUP BY account_id, type",
        since=since_entry,
    ):
        since[int(account_id)][str(type_)] = int(total)
    return [
        AccountFigures(
            account_id=account_id,
            balance=balance,
            open_holds=len(opened[account_id]),
            open_held=sum(amount for amount, _ in opened[account_id]),
            stale_holds=sum(1 for _, expires in opened[account_id] if expires + grace < now),
            last_open_expiry=max((expires for _, expires in opened[account_id]), default=None),
            since=since[account_id],
        )
        for account_id, balance in sorted(balances.items())
    ]
