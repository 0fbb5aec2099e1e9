"""The ledger auditor: money invariants, checked on any creditgate database.

Checks, per account and per hold:
- ``balance == sum(ledger amounts)`` and ``balance >= 0``;
- each entry's ``balance_after`` equals the running sum up to it (no lost update, nothing rewritten);
- every hold has exactly one ``hold`` entry; a closed hold exactly one ``release``; an open hold none;
  a settled hold's ``api_usage`` entries add up to what it charged;
- no hold is still open past its expiry (plus ``grace``);
- no idempotency key was applied twice.

Use it from tests (with ``creditgate_fixtures = true`` it runs after every test that used ``database_url``),
or on a live database after a load run: ``python -m creditgate.testing.auditor postgresql+asyncpg://...``
(exit 0: clean; 1: a violation; 2: cannot audit — unreachable, or not a creditgate database).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from creditgate.db.engine import create_engine
from creditgate.money import from_hundredths
from creditgate_harness.services.base import run_sync


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.detail}"


@dataclass
class AuditReport:
    accounts: int = 0
    entries: int = 0
    holds: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        head = f"ledger audit: {self.accounts} accounts, {self.entries} entries, {self.holds} holds"
        if self.ok:
            return head + ": all invariants hold"
        lines = [head + f": {len(self.violations)} violation(s)"]
        lines += [f"  {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            lines.append(f"  ... and {len(self.violations) - 50} more")
        return "\n".join(lines)


def _c(units: int) -> str:
    return str(from_hundredths(int(units)))


async def audit(engine: AsyncEngine, *, grace: timedelta = timedelta(0)) -> AuditReport:
    """Check every invariant; never writes."""
    report = AuditReport()
    add = report.violations.append
    async with engine.connect() as conn:
        q = conn.execute
        report.accounts = int((await q(text("SELECT count(*) FROM accounts"))).scalar_one())
        report.entries = int((await q(text("SELECT count(*) FROM ledger_entries"))).scalar_one())
        report.holds = int((await q(text("SELECT count(*) FROM holds"))).scalar_one())

        rows = await q(
            text(
                "SELECT a.id, a.balance, COALESCE(SUM(l.amount), 0) AS total FROM accounts a "
                "LEFT JOIN ledger_entries l ON l.account_id = a.id GROUP BY a.id, a.balance "
                "HAVING a.balance <> COALESCE(SUM(l.amount), 0) OR a.balance < 0"
            )
        )
        for account_id, balance, total in rows:
            if balance < 0:
                add(Violation("negative-balance", f"account {account_id}", f"balance {_c(balance)}"))
            if balance != total:
                add(
                    Violation(
                        "balance-vs-ledger",
                        f"account {account_id}",
                        f"balance {_c(balance)} != ledger sum {_c(total)} (off by {_c(balance - total)})",
                    )
                )

        running: dict[int, int] = {}
        entries = await q(text("SELECT id, account_id, amount, balance_after FROM ledger_entries ORDER BY id"))
        for entry_id, account_id, amount, after in entries:
            running[account_id] = running.get(account_id, 0) + amount
            if running[account_id] != after:
                add(
                    Violation(
                        "running-balance",
                        f"entry {entry_id} (account {account_id})",
                        f"balance_after {_c(after)} but the entries so far sum to {_c(running[account_id])}",
                    )
                )
                running[account_id] = after  # report each break once

        holds = await q(
            text(
                "SELECT h.id, h.status, h.amount, h.charged, h.expires_at, "
                "SUM(CASE WHEN l.type = 'hold' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN l.type = 'hold' THEN -l.amount ELSE 0 END), "
                "SUM(CASE WHEN l.type = 'release' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN l.type = 'release' THEN l.amount ELSE 0 END), "
                "SUM(CASE WHEN l.type = 'api_usage' THEN -l.amount ELSE 0 END) "
                "FROM holds h LEFT JOIN ledger_entries l ON l.hold_id = h.id "
                "GROUP BY h.id, h.status, h.amount, h.charged, h.expires_at"
            )
        )
        now = datetime.now(UTC)
        for hid, status, amount, charged, expires, n_hold, held, n_rel, released, used in holds:
            subject = f"hold {hid} ({status})"
            if n_hold != 1 or held != amount:
                add(
                    Violation(
                        "hold-entry", subject, f"{n_hold} hold entries for {_c(held)}, expected 1 for {_c(amount)}"
                    )
                )
            expected_releases = 0 if status == "open" else 1
            if n_rel != expected_releases or (n_rel and released != amount):
                add(Violation("hold-release", subject, f"{n_rel} release entries for {_c(released or 0)}"))
            if used != charged:
                add(Violation("hold-charge", subject, f"charged {_c(charged)} but api_usage entries total {_c(used)}"))
            if status == "open":
                expires_at = expires if isinstance(expires, datetime) else datetime.fromisoformat(str(expires))
                if expires_at.tzinfo is None:
                    expires_at = expires_at.replace(tzinfo=UTC)
                if expires_at + grace < now:
                    add(Violation("stale-hold", subject, f"still open {now - expires_at} after expiry"))

        dupes = await q(
            text(
                "SELECT idempotency_key, count(*) FROM ledger_entries WHERE idempotency_key IS NOT NULL "
                "GROUP BY idempotency_key HAVING count(*) > 1"
            )
        )
        for key, count in dupes:
            add(Violation("idempotency", f"key {key!r}", f"applied {count} times"))
    return report


class CannotAudit(Exception):
    """The database cannot be audited: unreachable, or it does not hold creditgate's schema."""


REQUIRED_TABLES = ("accounts", "ledger_entries", "holds")


async def _require_schema(engine: AsyncEngine) -> None:
    from sqlalchemy import inspect

    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    except Exception as exc:  # the driver's own errors vary: refused, unknown database, bad URL, …
        raise CannotAudit(
            f"cannot connect: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise CannotAudit(f"not a creditgate database (no {', '.join(missing)} table); run `creditgate migrate` first?")


def audit_url(url: str, *, grace: timedelta = timedelta(0)) -> AuditReport:
    """Synchronous ``audit`` for a database URL (callable from sync code and from inside an event loop)."""

    async def _main() -> AuditReport:
        try:
            engine = create_engine(url, pool_size=1)
        except Exception as exc:  # unknown driver, malformed URL
            raise CannotAudit(f"bad database URL: {exc}") from exc
        try:
            await _require_schema(engine)
            return await audit(engine, grace=grace)
        finally:
            await engine.dispose()

    report: AuditReport = run_sync(_main())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check creditgate's ledger invariants on a database.")
    parser.add_argument("database_url", help="e.g. postgresql+asyncpg://postgres@127.0.0.1/creditgate")
    parser.add_argument("--grace-seconds", type=float, default=0.0, help="allow holds this long past expiry")
    args = parser.parse_args(argv)
    try:
        report = audit_url(args.database_url, grace=timedelta(seconds=args.grace_seconds))
    except CannotAudit as exc:
        print(f"cannot audit {args.database_url}: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
