"""Run locust against any app through its ``LoadAdapter`` and judge the run: figures, money oracle, audit.

``run_against`` is one run: the adapter provisions the run's accounts; their books are read; locust runs headless
in its own process(es) (``processes`` > 1: locust's distributed engine, master + N workers, one merged set of final
statistics; ``shape``: steady/ramp/spike/soak) into the run's directory; the books are read again once final; the
adapter tears the run down. ``judge`` then fails the run on:

- locust's final statistics: any 5xx, a scenario exception, an error rate or p95 over the thresholds, no paid
  request at all (summary.py);
- the **money oracle** (creditgate_harness/oracle.py) when the fake upstream's (and the fake Stripe's) records are
  reachable: each account's books against what was served and paid, priced by the adapter;
- the app's own **audit**, where its adapter has one.

``measure_ceiling`` runs the same scenarios against a bare fake upstream (no app), so a report says whether the app
or the generator was the limit. ``python -m creditgate_harness.load`` is the command line (``__main__.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from creditgate_harness.load.adapter import Accounts, LoadAdapter, Verdict
from creditgate_harness.load.summary import NoResults, Summary, problems, read_summary, table
from creditgate_harness.oracle import OracleReport, Outcome, Payment, check_money
from creditgate_harness.services.base import free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SHAPES = ("steady", "ramp", "spike", "soak")
BARE = "creditgate_harness.load.adapter:BareUpstream"


def seconds(value: str) -> float:
    """locust's run-time syntax (``30s``, ``2m``, ``1h30m``, ``90``) in seconds."""
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+)([hms])", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise argparse.ArgumentTypeError(f"{value!r}: use e.g. 30s, 2m, 1h30m")
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


def wait_http(url: str, *, timeout: float = 20) -> None:
    """Until ``url`` answers anything (a server started in another process is up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.05)


def spawn(module: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m module args…`` with its output appended to ``log``."""
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=f, stderr=subprocess.STDOUT)


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
        """The run's final figures (``NoResults`` if locust wrote none)."""
        return read_summary(self.stats, self.statuses)

    def rows(self) -> list[dict[str, Any]]:
        """Every request the clients sent, as the locustfile recorded it."""
        if not self.records.is_file():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line]


def start_locust(
    out: Path,
    *,
    adapter: str,
    plan: Path,
    host: str,
    users: int,
    duration: float,
    options: dict[str, str] | None = None,
    processes: int = 1,
    shape: str = "steady",
    prefix: str = "",
    env: dict[str, str] | None = None,
) -> tuple[LocustRun, subprocess.Popen[bytes]]:
    """locust headless in its own process (``processes`` > 1: master + N workers) with ``adapter`` (``module:Class``,
    built with ``target=host`` and ``options``) and the clients of ``plan``, writing its final stats, statuses and
    records into ``out``.

    ``--json-file`` writes locust's own final statistics at exit (merged from every worker in distributed mode).
    """
    run = LocustRun(out, prefix, 0)
    args = ["--headless", "--only-summary", "--host", host, "-t", f"{int(duration) + 30}s", "--stop-timeout", "5"]
    args += ["--json-file", str(out / f"{prefix}stats"), "--html", str(out / f"{prefix}report.html")]
    if processes > 1:
        args += ["--processes", str(processes)]
    files = {
        "LOAD_ADAPTER": adapter,
        "LOAD_ADAPTER_OPTIONS": json.dumps({"target": host, **(options or {})}),
        "LOAD_PLAN_FILE": str(plan),
        "LOAD_STATUS_FILE": str(run.statuses),
        "LOAD_RECORDS_FILE": str(run.records),
        "LOAD_SHAPE": shape,
        "LOAD_USERS": str(users),
        "LOAD_SECONDS": str(duration),
    }
    # The adapter's module is imported in locust's processes: from where the runner was started, as here.
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    with (out / f"{prefix}locust.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args, "--exit-code-on-error", "0"],
            env={**os.environ, "PYTHONPATH": path, **files, **(env or {})},
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
    """What the generator did with ``processes`` locust processes against a bare fake upstream."""

    processes: int
    rps: float | None  # None: the run gave no figures
    p50_ms: int = 0


def measure_ceiling(out: Path, *, users: int, duration: float, processes: list[int]) -> list[Ceiling]:
    """Chat scenarios against a bare fake upstream (no app): what the generator itself can do."""
    port = free_port()
    fake = spawn("creditgate_harness.fakes.providers", "--port", str(port), log=out / "ceiling-upstream.log")
    plan = out / "ceiling-plan.json"
    plan.write_text(
        json.dumps({"run_id": "ceiling", "clients": [{"account": "bare"}, {"account": "bare", "shared": True}]})
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models")
        found = []
        for n in processes:
            run = run_locust(
                out,
                adapter=BARE,
                plan=plan,
                host=f"http://127.0.0.1:{port}",
                users=users,
                duration=duration,
                processes=n,
                prefix=f"ceiling-{n}p-",
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
    """The report's lines on the generator's ceiling and whether this run reached it."""
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
            else "the app was the limit, not the generator"
        )
        lines.append(
            f"this run: {achieved:.0f} req/s with {processes} process(es) = {share:.0%} of that ceiling: {verdict}"
        )
    return lines


# -- the money oracle ------------------------------------------------------------------------------------------
def outcomes_from(rows: list[dict[str, Any]]) -> list[Outcome]:
    """The clients' records of paid requests (those with a request id) as the oracle's outcomes."""
    return [
        Outcome(r["rid"], str(r["account"]), int(r["status"]), bool(r.get("stream")), bool(r.get("complete", True)))
        for r in rows
        if r.get("rid")
    ]


def fakes_records(
    upstream: str, stripe: str | None, *, since: tuple[int, int] = (0, 0)
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What the fake upstream served (``GET /_fake/served``) and the fake Stripe completed (``/_test/payments``),
    from the ``since`` offsets on (``fakes_offsets`` before the run: fakes that outlive a run keep its
    predecessors' records, whose markers may name the same account ids)."""
    served: list[dict[str, Any]] = httpx.get(f"{upstream.rstrip('/')}/_fake/served", timeout=60).json()
    payments: list[dict[str, Any]] = (
        httpx.get(f"{stripe.rstrip('/')}/_test/payments", timeout=30).json() if stripe else []
    )
    return served[since[0] :], payments[since[1] :]


def fakes_offsets(upstream: str | None, stripe: str | None) -> tuple[int, int]:
    """How many records the fakes hold now (``fakes_records(since=…)`` after the run skips them)."""
    if not upstream:
        return 0, 0
    served, payments = fakes_records(upstream, stripe)
    return len(served), len(payments)


def money_verdict(
    adapter: LoadAdapter,
    *,
    rows: list[dict[str, Any]],
    before: Any,
    after: Any,
    served: list[dict[str, Any]],
    payments: list[dict[str, Any]],
) -> OracleReport:
    """The oracle's verdict on one run: the clients' rows, the fakes' records, the books as the adapter reads them."""
    return check_money(
        outcomes=outcomes_from(rows),
        served=served,
        payments=[
            Payment.from_json(p, account=adapter.payment_account, credits=adapter.payment_credits) for p in payments
        ],
        books=adapter.books(before, after),
        price=adapter.price,
    )


# -- one run ---------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What ``run_against`` found: locust's run, the oracle's verdict (or why it did not run), the audit."""

    locust: LocustRun
    accounts: Accounts
    oracle: OracleReport | None
    oracle_skipped: str
    audit: Verdict | None
    audit_source: str
    audited: bool = True  # the adapter audits: no verdict is then a failure
    notes: list[str] = field(default_factory=list)


def run_against(
    out: Path,
    *,
    adapter: LoadAdapter,
    spec: str,
    target: str,
    args: argparse.Namespace,
    options: dict[str, str] | None = None,
    upstream: str | None = None,
    stripe: str | None = None,
) -> RunResult:
    """Provision through ``adapter`` (built from ``spec`` with ``options``), load ``target``, read the books, judge
    the money and tear down. ``args``: users, members, duration, shape, processes, run_id, webhook_secret, keep."""
    started = time.monotonic()
    accounts = adapter.provision(args.run_id, users=args.users, members=args.members)
    plan = out / "plan.json"
    plan.write_text(json.dumps(accounts.plan()))
    print(
        f"provisioned run {args.run_id} through {spec} in {time.monotonic() - started:.1f} s: "
        f"{len(accounts.clients)} clients on {len(accounts.accounts)} accounts"
    )
    before = adapter.snapshot(accounts)
    offsets = fakes_offsets(upstream, stripe)
    env = {"LOAD_WEBHOOK_SECRET": args.webhook_secret} | ({"LOAD_STRIPE_URL": stripe} if stripe else {})
    locust = run_locust(
        out,
        adapter=spec,
        options=options,
        plan=plan,
        host=target,
        users=args.users,
        duration=args.duration,
        processes=args.processes,
        shape=args.shape,
        env=env,
    )
    after = adapter.settle(accounts, before)
    (out / "books.json").write_text(json.dumps({"before": before, "after": after}, indent=1, default=str))
    oracle, skipped = None, ""
    if upstream:
        served, payments = fakes_records(upstream, stripe, since=offsets)
        oracle = money_verdict(
            adapter, rows=locust.rows(), before=before, after=after, served=served, payments=payments
        )
    else:
        skipped = "no --fake-upstream: what the upstream served is unknown"
    audit, source = adapter.audit(accounts)
    result = RunResult(locust, accounts, oracle, skipped, audit, source, audited=adapter.audits)
    if not args.keep:
        print(adapter.teardown(accounts))
    return result


def judge(
    out: Path,
    *,
    locust_exit: int,
    audit: Verdict | None,
    args: argparse.Namespace,
    oracle: OracleReport | None = None,
    prefix: str = "",
    audited: bool = True,
) -> list[str]:
    """Print the run's summary, the oracle's and the auditor's verdicts; return why the run fails (empty: passes).

    ``audited``: the app has an audit, so no verdict from it fails the run."""
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
        if audited:
            found.append("the ledger could not be audited")
    else:
        print(audit)
        if not audit.ok:
            found.append("ledger audit failed")
    return found


def report(
    out: Path,
    result: RunResult,
    *,
    args: argparse.Namespace,
    ceilings: list[Ceiling],
    where: str,
    oracle_required: bool,
) -> int:
    """Print the whole verdict of a run; its exit code (0: passed)."""
    print(
        f"\nload: run {args.run_id}, {args.users} users, {args.shape} {args.duration:.0f} s, {args.processes} locust "
        f"process(es), {where}; files in {out}"
    )
    found = judge(
        out,
        locust_exit=result.locust.exit_code,
        audit=result.audit,
        args=args,
        oracle=result.oracle,
        audited=result.audited,
    )
    if result.oracle is None:
        print(f"money oracle: NOT RUN ({result.oracle_skipped})")
    print(f"audit source: {result.audit_source}")
    achieved = None
    with contextlib.suppress(NoResults):
        achieved = result.locust.summary().rps
    for line in ceiling_lines(ceilings, achieved=achieved, processes=args.processes):
        print(line)
    if oracle_required and result.oracle is None:
        found.append("the money oracle did not run")
    for problem in found:
        print(f"load: FAILED: {problem}")
    if not found:
        print("load: PASSED" + (" (without the money oracle)" if result.oracle is None else ""))
    return 1 if found else 0


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every load command line shares (the generic one and creditgate's ``nox -s load``)."""
    parser.add_argument("--users", type=int, default=40, help="concurrent locust users (the shape's peak)")
    parser.add_argument("--members", type=int, default=10, help="clients sharing one account (an org's members)")
    parser.add_argument("--time", type=seconds, default=30.0, dest="duration", help="run time (30s, 2m, ...)")
    parser.add_argument("--shape", choices=SHAPES, default="steady")
    parser.add_argument("--processes", type=int, default=1, help="locust processes (> 1: master + N workers)")
    parser.add_argument("--max-error-rate", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=2000.0)
    parser.add_argument("--run-id", default=None, help="name of the run's accounts (default: new)")
    parser.add_argument("--keep", "--keep-users", action="store_true", dest="keep", help="skip the adapter's teardown")
    parser.add_argument("--ceiling-time", type=seconds, default=8.0, help="each ceiling measurement's run time")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the generator ceiling (the report says so)")
    parser.add_argument("--out", type=Path, default=Path("reports/load"), help="each run writes into OUT/<run-id>/")


def ceilings_for(out: Path, args: argparse.Namespace) -> list[Ceiling]:
    """The generator's ceiling with 1, 2 and ``--processes`` locust processes (none with ``--no-ceiling``)."""
    if args.no_ceiling:
        return []
    return measure_ceiling(out, users=args.users, duration=args.ceiling_time, processes=sorted({1, 2, args.processes}))


__all__ = [
    "Ceiling",
    "LocustRun",
    "RunResult",
    "add_run_options",
    "ceiling_lines",
    "ceilings_for",
    "fakes_offsets",
    "fakes_records",
    "judge",
    "measure_ceiling",
    "money_verdict",
    "outcomes_from",
    "report",
    "run_against",
    "run_locust",
    "seconds",
    "spawn",
    "start_locust",
    "wait_http",
]
