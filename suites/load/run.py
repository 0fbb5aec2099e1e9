"""Run the load scenarios end to end and judge them: `python -m suites.load.run` (what `nox -s load` runs).

Two modes:

- **Loopback** (default): Postgres and Redis from the harness, a fresh database, the fake upstream and the fake
  Stripe as servers, the gateway with N workers (suites/load/stack.py); an admin key made in the database.
- **Any target**: ``--target URL --admin-key KEY``: a gateway someone else runs. Nothing touches its database.

Both then do the same, through the admin API only (suites/load/provision.py): provision the run's users, an org
with members, their credits, plans and keys (idempotent, named after the run id); snapshot their accounts with the
read-only ledger audit endpoint; run locust headless in its own process(es) (``--processes N``: locust's
distributed engine, master + N workers, one merged set of final statistics; ``--shape``: steady/ramp/spike/soak)
into a fresh reports/load/<run-id>/; wait until no hold is open (or every open one is past its TTL); deactivate the
run's users; then judge:

- locust's final statistics: any 5xx, a scenario exception, an error rate or p95 over the thresholds, no paid
  request at all fail the run (suites/load/summary.py);
- the **money oracle** (creditgate_harness/oracle.py) when the fake upstream's and the fake Stripe's records are
  reachable (always on loopback; ``--fake-upstream``/``--fake-stripe`` for a target wired to the fakes): each
  account's books against what was served and paid;
- the **ledger auditor**: on ``--database-url`` when given (the harness auditor), else the audit endpoint;
- the **generator's ceiling**: the same chat scenarios against a bare fake upstream, with 1 and 2 locust processes,
  in the same run, so the report says whether the gateway or the generator was the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from creditgate.testing.auditor import AuditReport, CannotAudit, Violation, audit_url
from creditgate_harness.oracle import OracleReport, Outcome, Payment, Pricing, Served, books_from_audit, check_money
from creditgate_harness.services import start_postgres
from creditgate_harness.services.base import free_port
from suites.load.provision import Admin, Provisioned, deactivate, provision, wait_for_holds
from suites.load.stack import HOLD_TTL, SWEEP_INTERVAL, WEBHOOK_SECRET, Stack, spawn, wait_http
from suites.load.summary import NoResults, Summary, problems, read_summary, table

REPORTS = Path("reports/load")
SHAPES = ("steady", "ramp", "spike", "soak")
__all__ = ["main", "start_postgres"]  # start_postgres: the loopback stack's (tests replace it)


def seconds(value: str) -> float:
    """locust's run-time syntax (``30s``, ``2m``, ``1h30m``, ``90``) in seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+)([hms])", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise argparse.ArgumentTypeError(f"{value!r}: use e.g. 30s, 2m, 1h30m")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


@dataclass
class LocustRun:
    """One locust invocation's files and exit code."""

    out: Path
    prefix: str
    exit_code: int

    @property
    def stats(self) -> Path:
        return self.out / f"{self.prefix}stats.json"

    @property
    def statuses(self) -> Path:
        return self.out / f"{self.prefix}statuses.json"

    @property
    def records(self) -> Path:
        return self.out / f"{self.prefix}records.jsonl"

    def summary(self) -> Summary:
        return read_summary(self.stats, self.statuses)

    def rows(self) -> list[dict[str, Any]]:
        if not self.records.is_file():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line]


def start_locust(
    out: Path,
    *,
    host: str,
    users: int,
    duration: float,
    processes: int = 1,
    shape: str = "steady",
    prefix: str = "",
    env: dict[str, str] | None = None,
) -> tuple[LocustRun, subprocess.Popen[bytes]]:
    """locust headless in its own process (``processes`` > 1: master + N workers), writing its final stats,
    statuses and records into ``out``.

    ``--json-file`` writes locust's own final statistics at exit (merged from every worker in distributed mode).
    """
    run = LocustRun(out, prefix, 0)
    args = ["--headless", "--only-summary", "--host", host, "-t", f"{int(duration) + 30}s", "--stop-timeout", "5"]
    args += ["--json-file", str(out / f"{prefix}stats"), "--html", str(out / f"{prefix}report.html")]
    if processes > 1:
        args += ["--processes", str(processes)]
    files = {
        "LOAD_STATUS_FILE": str(run.statuses),
        "LOAD_RECORDS_FILE": str(run.records),
        "LOAD_SHAPE": shape,
        "LOAD_USERS": str(users),
        "LOAD_SECONDS": str(duration),
        "LOAD_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    with (out / f"{prefix}locust.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", "suites/load/locustfile.py", *args, "--exit-code-on-error", "0"],
            env={**os.environ, **files, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return run, process


def run_locust(out: Path, **kw: Any) -> LocustRun:
    """``start_locust`` and wait for it."""
    run, process = start_locust(out, **kw)
    run.exit_code = process.wait()
    return run


# -- the generator's ceiling -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ceiling:
    processes: int
    rps: float | None  # None: the run gave no figures
    p50_ms: int = 0


def measure_ceiling(out: Path, *, users: int, duration: float, processes: list[int]) -> list[Ceiling]:
    """The same chat scenarios against a bare fake upstream (no gateway): what the generator itself can do."""
    port = free_port()
    fake = spawn("creditgate_harness.fakes.providers", "--port", str(port), log=out / "ceiling-upstream.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        found = []
        for n in processes:
            run = run_locust(
                out,
                host=f"http://127.0.0.1:{port}",
                users=users,
                duration=duration,
                processes=n,
                prefix=f"ceiling-{n}p-",
                env={"LOAD_BARE": "1"},
            )
            try:
                summary = run.summary()
                found.append(Ceiling(n, summary.rps, summary.p(0.5)))
            except NoResults:
                found.append(Ceiling(n, None))
        return found
    finally:
        fake.terminate()
        fake.wait(10)


def ceiling_lines(ceilings: list[Ceiling], *, achieved: float | None, processes: int) -> list[str]:
    if not ceilings:
        return ["generator ceiling: NOT MEASURED (--no-ceiling): this report cannot say what the limit was"]
    parts = [
        f"{c.processes} process(es) {c.rps:.0f} req/s" if c.rps else f"{c.processes} process(es) NO FIGURES"
        for c in ceilings
    ]
    lines = ["generator ceiling (same scenarios, bare fake upstream, this run): " + ", ".join(parts)]
    same = next((c for c in ceilings if c.processes == processes and c.rps), None)
    if achieved is not None and same is not None:
        share = achieved / same.rps if same.rps else 0.0
        verdict = (
            "the GENERATOR may have been the limit (>= 80 % of its ceiling): add --processes or machines"
            if share >= 0.8
            else "the gateway was the limit, not the generator"
        )
        lines.append(
            f"this run: {achieved:.0f} req/s with {processes} process(es) = {share:.0%} of that ceiling: {verdict}"
        )
    return lines


# -- the money oracle ------------------------------------------------------------------------------------------
def outcomes_from(rows: list[dict[str, Any]]) -> list[Outcome]:
    return [
        Outcome(r["rid"], str(r["account"]), int(r["status"]), bool(r.get("stream")), bool(r.get("complete", True)))
        for r in rows
        if r.get("rid")
    ]


def money_oracle(
    *,
    target: str,
    admin: Admin,
    upstream: str,
    stripe: str | None,
    rows: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    margin: Decimal,
    credit_value_usd: Decimal,
) -> OracleReport:
    """The oracle's inputs, each from its own source: the fakes' records, the clients', the books via the API."""
    catalog = httpx.get(f"{target}/catalog/models", timeout=30).json()
    pricing = Pricing.from_catalog(
        catalog, margin=margin, credit_value_usd=credit_value_usd, increment=admin.increment()
    )
    served = [Served.from_json(s) for s in httpx.get(f"{upstream}/_fake/served", timeout=60).json()]
    payments = (
        [Payment.from_json(p) for p in httpx.get(f"{stripe}/_test/payments", timeout=30).json()] if stripe else []
    )
    return check_money(
        outcomes=outcomes_from(rows),
        served=served,
        payments=payments,
        books=books_from_audit(before, after),
        pricing=pricing,
    )


def endpoint_audit(admin: Admin, accounts: list[int] | None, *, grace: float) -> AuditReport:
    """The audit endpoint's answer as an AuditReport (the same shape as the harness auditor's)."""
    found = admin.audit(accounts, grace=grace)
    return AuditReport(
        accounts=found["accounts"],
        entries=found["entries"],
        holds=found["holds"],
        violations=[Violation(v["check"], v["subject"], v["detail"]) for v in found["violations"]],
    )


# -- one run against a gateway ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    locust: LocustRun
    oracle: OracleReport | None
    oracle_skipped: str
    audit: AuditReport | None
    audit_source: str
    provisioned: Provisioned


def run_against(
    out: Path,
    *,
    target: str,
    admin_key: str,
    args: argparse.Namespace,
    upstream: str | None,
    stripe: str | None,
    database_url: str | None,
    sweep_grace: float,
) -> RunResult:
    admin = Admin(target, admin_key)
    run_id = args.run_id
    try:
        started = time.monotonic()
        provisioned = provision(
            admin, run_id, users=args.users, members=args.members, key_ttl=int(args.duration) + 6 * 3600
        )
        (out / "keys.json").write_text(json.dumps(provisioned.keys_file()))
        print(
            f"provisioned run {run_id} through the API in {time.monotonic() - started:.1f} s: {len(provisioned.users)} "
            f"users, org {provisioned.org_id} with {len(provisioned.org_members)} members"
        )
        accounts = provisioned.accounts
        before = admin.audit(accounts)
        env = {"LOAD_KEYS_FILE": str(out / "keys.json"), "LOAD_MODEL": args.model}
        if stripe:
            env |= {"LOAD_STRIPE_URL": stripe, "LOAD_WEBHOOK_SECRET": args.webhook_secret}
        locust = run_locust(
            out,
            host=target,
            users=args.users,
            duration=args.duration,
            processes=args.processes,
            shape=args.shape,
            env=env,
        )
        after = wait_for_holds(
            admin, accounts, since_entry=before["last_entry_id"], sweep_grace=sweep_grace, max_wait=args.hold_wait
        )
        (out / "books.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
        oracle, skipped = None, ""
        if upstream:
            oracle = money_oracle(
                target=target,
                admin=admin,
                upstream=upstream,
                stripe=stripe,
                rows=locust.rows(),
                before=before,
                after=after,
                margin=args.margin,
                credit_value_usd=args.credit_value_usd,
            )
        else:
            skipped = "no --fake-upstream: what the upstream served is unknown"
        audit, source = None, ""
        try:
            if database_url:
                audit, source = audit_url(database_url), "harness auditor on the database"
            else:
                scope = None if args.audit_scope == "ledger" else accounts
                audit = endpoint_audit(admin, scope, grace=sweep_grace)
                source = f"admin audit endpoint ({args.audit_scope})"
        except CannotAudit as exc:
            source = f"cannot audit: {exc}"
        if not args.keep_users:
            done = deactivate(admin, provisioned)
            print(f"deactivated the run's {done['users']} users ({done['keys_revoked']} keys revoked)")
        return RunResult(locust, oracle, skipped, audit, source, provisioned)
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40, help="concurrent locust users (the shape's peak)")
    parser.add_argument("--members", type=int, default=10, help="org members")
    parser.add_argument("--time", type=seconds, default=30.0, dest="duration", help="run time (30s, 2m, ...)")
    parser.add_argument("--shape", choices=SHAPES, default="steady")
    parser.add_argument("--processes", type=int, default=1, help="locust processes (> 1: master + N workers)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (loopback)")
    parser.add_argument("--model", default="gpt-4o", help="the model the chat scenarios ask for")
    parser.add_argument("--max-error-rate", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=2000.0)
    target = parser.add_argument_group("any target")
    target.add_argument("--target", help="a running gateway's base URL (else a loopback stack is started)")
    target.add_argument("--admin-key", default=os.environ.get("LOAD_ADMIN_KEY"), help="or LOAD_ADMIN_KEY")
    target.add_argument("--database-url", help="audit this database with the harness auditor (else the endpoint)")
    target.add_argument("--audit-scope", choices=("ledger", "run"), default="ledger", help="endpoint audit scope")
    target.add_argument("--fake-upstream", help="the fake provider the target is wired to (for the oracle)")
    target.add_argument("--fake-stripe", help="the fake Stripe the target is wired to (payments + oracle)")
    target.add_argument("--webhook-secret", default=WEBHOOK_SECRET, help="the target's Stripe webhook secret")
    target.add_argument("--sweep-grace", type=float, default=35.0, help="the target's sweep interval + margin (s)")
    target.add_argument("--margin", type=Decimal, default=Decimal("1.5"), help="the target's CREDITGATE_MARGIN")
    target.add_argument("--credit-value-usd", type=Decimal, default=Decimal("0.01"))
    parser.add_argument("--run-id", default=None, help="name of the run's users and org (default: new)")
    parser.add_argument("--keep-users", action="store_true", help="do not deactivate the run's users afterwards")
    parser.add_argument("--hold-wait", type=float, default=90.0, help="wait at most this long for open holds (s)")
    parser.add_argument("--ceiling-time", type=seconds, default=8.0, help="each ceiling measurement's run time")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the generator ceiling (the report says so)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        print(f"load: FAILED: locust is not installed for {sys.executable} (nox -s load installs it)")
        return 1
    if args.target and not args.admin_key:
        parser.error("--target needs --admin-key (or LOAD_ADMIN_KEY)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    args.run_id = args.run_id or stamp.replace("T", "").replace("Z", "").lower()
    out = REPORTS / stamp
    out.mkdir(parents=True)

    ceilings = (
        []
        if args.no_ceiling
        else measure_ceiling(
            out, users=args.users, duration=args.ceiling_time, processes=sorted({1, 2, args.processes})
        )
    )
    if args.target:
        result = run_against(
            out,
            target=args.target.rstrip("/"),
            admin_key=args.admin_key,
            args=args,
            upstream=args.fake_upstream,
            stripe=args.fake_stripe,
            database_url=args.database_url,
            sweep_grace=args.sweep_grace,
        )
        where = f"target {args.target}"
    else:
        stack = Stack(out, workers=args.workers, backend=os.environ.get("HARNESS_SERVICES", "auto"))
        try:
            stack.start()
            result = run_against(
                out,
                target=stack.url,
                admin_key=stack.admin_key,
                args=args,
                upstream=stack.upstream_url,
                stripe=stack.stripe_url,
                database_url=stack.database_url,
                sweep_grace=SWEEP_INTERVAL + 5,
            )
        finally:
            stack.stop()
        where = f"loopback, {args.workers} gateway workers, hold TTL {HOLD_TTL} s"

    print(
        f"\nload: run {args.run_id}, {args.users} users, {args.shape} {args.duration:.0f} s, {args.processes} locust "
        f"process(es), {where}; files in {out}"
    )
    found = judge(out, locust_exit=result.locust.exit_code, audit=result.audit, args=args, oracle=result.oracle)
    if result.oracle is None:
        print(f"money oracle: NOT RUN ({result.oracle_skipped})")
    print(f"audit source: {result.audit_source}")
    achieved = None
    with contextlib.suppress(NoResults):
        achieved = result.locust.summary().rps
    for line in ceiling_lines(ceilings, achieved=achieved, processes=args.processes):
        print(line)
    if args.target is None and result.oracle is None:
        found.append("the money oracle did not run")
    for problem in found:
        print(f"load: FAILED: {problem}")
    if not found:
        print("load: PASSED" + (" (without the money oracle)" if result.oracle is None else ""))
    return 1 if found else 0


def judge(
    out: Path,
    *,
    locust_exit: int,
    audit: AuditReport | None,
    args: argparse.Namespace,
    oracle: OracleReport | None = None,
    prefix: str = "",
) -> list[str]:
    """Print the run's summary, the oracle's and the auditor's verdicts; return why the run fails (empty: passes)."""
    found = [] if locust_exit == 0 else [f"locust exited {locust_exit}"]
    try:
        summary = read_summary(out / f"{prefix}stats.json", out / f"{prefix}statuses.json")
        print(table(summary))
        found += problems(summary, max_error_rate=args.max_error_rate, max_p95_ms=args.max_p95_ms)
    except NoResults as exc:
        found.append(str(exc))
    if oracle is not None:
        print(oracle)
        if not oracle.ok:
            found.append(
                "the money oracle found the books wrong" if oracle.violations else "the money oracle was inconclusive"
            )
    if audit is None:
        found.append("the ledger could not be audited")
    else:
        print(audit)
        if not audit.ok:
            found.append("ledger audit failed")
    return found


if __name__ == "__main__":
    sys.exit(main())
