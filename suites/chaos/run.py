"""Faults injected mid-load, each a named scenario ending with the money oracle and the auditor: `nox -s chaos`.

Loopback only, on a private stack (suites/load/stack.py with the harness's *local* backends: an initdb'd Postgres
and a redis-server of its own, so restarting them disturbs nobody): the fake upstream and the fake Stripe as
servers, the gateway with N uvicorn workers. Each scenario provisions its own users and org through the admin API
(so each has its own accounts and its own oracle verdict), runs the load scenarios for a fixed time, and injects
its fault after a baseline period:

- ``kill-one-worker``: ``kill -9`` one gateway worker; uvicorn's supervisor starts another;
- ``kill-all-workers``: ``kill -9`` the supervisor and every worker; the gateway is started again on its port;
- ``postgres-restart``: the private Postgres, fast shutdown, down a moment, started again;
- ``redis-restart``: the private Redis shut down and started again (quota counters fail open: docs/orgs-and-quotas.md);
- ``upstream-storm``: the fake upstream answers a fifth of calls 503, times out on some and cuts some streams.

Every fault is the harness's own API, as any project's tests use it: ``LiveServer.kill_worker``/``kill_all``/
``restart`` on the gateway, ``Service.restart`` on the private Postgres and Redis, and a storm on the fake upstream
(``FakeProviderClient.storm``: the upstream runs in a process of its own).

The fault window runs from the injection until the stack is back (the gateway's /health answers 200 with every
worker serving again; for the storm, until it ends plus the upstream timeout and the breaker's cooldown).
After every scenario ran, the runner waits until no hold is open (stuck ones expire after the TTL of 30 s and the
sweeper releases them), then judges each scenario. Pass: requests and paid answers > 0; no 5xx and no unanswered
request outside the fault window; throughput after recovery within ``--margin`` of the baseline before the fault;
the money oracle: 0 credits lost or created and 0 holds open past their TTL; the auditor (the audit endpoint on
the scenario's accounts, and the harness auditor on the whole database at the end): clean.

```--short`` (CI): every fault in one locust run on one set of accounts (one oracle verdict for them all), fewer
users, shorter periods; every scenario still runs and gets its own row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from creditgate.db.engine import create_engine
from creditgate.testing.auditor import AuditReport, audit_url
from creditgate_harness.fakes.providers import FakeProviderClient, Fault
from creditgate_harness.load.summary import status_class
from creditgate_harness.oracle import OracleReport, Pricing, Served, parse_marker
from creditgate_harness.services.base import run_sync
from suites.load.provision import Admin, Provisioned, deactivate, provision, wait_for_holds
from suites.load.run import REPORTS, LocustRun, endpoint_audit, money_oracle, start_locust
from suites.load.stack import HOLD_TTL, SWEEP_INTERVAL, Stack

CREDITS = Decimal(300)  # each user's opening balance and each member's allocation; the org's balance is 4×

SCENARIOS = ("kill-all-workers", "kill-one-worker", "postgres-restart", "redis-restart", "upstream-storm")
UPSTREAM_TIMEOUT, BREAKER_COOLDOWN = 3.0, 2.0  # the stack's settings (suites/load/stack.py)


@dataclass
class Window:
    start: float = 0.0  # the fault injected
    end: float = 0.0  # the stack back
    note: str = ""
    baseline: float = 0.0  # the segment's baseline began
    stop: float = 0.0  # the segment's post-recovery period ended


@dataclass
class Scenario:
    name: str
    run_id: str
    provisioned: Provisioned
    before: dict[str, Any]
    locust: LocustRun
    window: Window
    oracle: OracleReport | None = None
    audit: AuditReport | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # this segment's requests
    all_rows: list[dict[str, Any]] | None = None  # the whole locust run's (on the run's first scenario)
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


# A fifth of the calls 503, a twentieth no answer before the gateway's timeout, a twentieth a stream (or an
# answer) cut after two chunks; the rest answered.
STORM = {Fault.status_code(503): 0.2, Fault.hang(UPSTREAM_TIMEOUT + 2): 0.05, Fault.cut_stream(2): 0.05}


def inject(name: str, stack: Stack, *, down: float, storm: float) -> Window:
    """Inject the fault, hold it, end it; the window from injection until the stack is back (the gateway's
    /health answers with every worker up)."""
    gateway, postgres, redis = stack.gateway, stack.postgres, stack.redis
    if gateway is None or postgres is None or redis is None:
        raise RuntimeError("the stack is not started")
    w = Window(start=time.time())
    if name == "kill-one-worker":
        pid = gateway.kill_worker()
        w.note = f"killed worker {pid}"
    elif name == "kill-all-workers":
        gateway.kill_all()
        time.sleep(down)
        gateway.restart()
        w.note = "killed the supervisor and every worker; started again"
    elif name == "postgres-restart":
        postgres.restart(down=down)
        w.note = f"Postgres fast shutdown, {down:.0f} s down, started"
    elif name == "redis-restart":
        redis.restart(down=down)
        w.note = f"Redis shut down, {down:.0f} s down, started"
    elif name == "upstream-storm":
        with FakeProviderClient(stack.upstream_url) as upstream:
            upstream.storm(STORM, seconds=storm)
            time.sleep(storm)
            given = upstream.end_storm() or {}
        time.sleep(UPSTREAM_TIMEOUT + BREAKER_COOLDOWN)
        counts = ", ".join(f"{f['fault']['fault']} {f['given']}" for f in given.get("faults", []))
        w.note = (
            f"{storm:.0f} s storm: 20 % 503, 5 % timeouts, 5 % cut ({counts}, {given.get('passed', 0)} answered); "
            "+ timeout and breaker cooldown"
        )
    else:
        raise ValueError(name)
    gateway.wait_ready(60)
    w.end = time.time()
    return w


def figures(rows: list[dict[str, Any]], window: Window, *, margin: float) -> dict[str, Any]:
    """Status classes, errors inside/outside the window, baseline and post-recovery throughput, recovery time.

    ``rows`` are one segment's requests: a baseline before ``window``, the window, a fixed period after it."""
    classes = Counter(status_class(r["status"]) for r in rows)
    errors = [r for r in rows if r["status"] == 0 or r["status"] >= 500]
    inside = [r for r in errors if r["t0"] <= window.end + 0.5 and r["t1"] >= window.start - 0.5]
    ok_at = [r["t1"] for r in rows if r.get("rid") and 200 <= r["status"] < 300]
    base = [t for t in ok_at if window.baseline <= t < window.start]
    baseline = len(base) / (window.start - window.baseline) if window.start > window.baseline else 0.0
    post_ok = [t for t in ok_at if window.end <= t < window.stop]
    post = len(post_ok) / (window.stop - window.end) if window.stop > window.end else 0.0
    per_second = Counter(int(t - window.end) for t in post_ok)
    seconds_after = int(window.stop - window.end)
    recovered = next((s for s in range(seconds_after) if per_second[s] >= (1 - margin) * baseline), None)
    return {
        "requests": len(rows),
        "classes": dict(classes),
        "errors_inside": len(inside),
        "errors_outside": len(errors) - len(inside),
        "baseline_rps": baseline,
        "post_rps": post,
        "post_seconds": window.stop - window.end,
        "recovery_s": None if recovered is None else float(recovered),
        "paid": len(ok_at),
    }


def _served_count(stack: Stack) -> int:
    with FakeProviderClient(stack.upstream_url) as upstream:
        return len(upstream.served())


def run_segments(
    names: list[str],
    stack: Stack,
    admin: Admin,
    out: Path,
    *,
    users: int,
    members: int,
    baseline: float,
    post: float,
    down: float,
    storm: float,
    processes: int,
) -> list[Scenario]:
    """One locust run on one set of accounts; the faults one after another, each after a baseline and followed by
    a fixed period of load; the load stops ``post`` seconds after the last recovery."""
    label = names[0] if len(names) == 1 else "all"
    run_id = f"chaos-{label}-{uuid.uuid4().hex[:6]}"
    # Enough credits that the faults meet paid traffic to the end: with the load run's 20-credit allocations, org
    # members at ~240 requests/s were refused (402 allocation_exhausted) for most of the last scenario.
    provisioned = provision(
        admin, run_id, users=users, members=members, user_credits=CREDITS, org_credits=CREDITS * 4, allocation=CREDITS
    )
    keys, stop = out / f"{label}-keys.json", out / f"{label}.stop"
    keys.write_text(json.dumps(provisioned.keys_file()))
    before = admin.audit(provisioned.accounts)
    env = {"LOAD_KEYS_FILE": str(keys), "LOAD_STRIPE_URL": stack.stripe_url, "LOAD_STOP_FILE": str(stop)}
    seen = _served_count(stack)
    locust, process = start_locust(
        out, host=stack.url, users=users, duration=600, processes=processes, prefix=f"{label}-", env=env
    )
    deadline = time.monotonic() + 60
    while _served_count(stack) < seen + users:  # locust is up and the gateway serving: the baseline starts
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"locust produced no traffic (see {out / f'{label}-locust.log'})")
        time.sleep(0.2)
    windows = []
    for name in names:
        begin = time.time()
        time.sleep(baseline)
        window = inject(name, stack, down=down, storm=storm)
        window.baseline = begin
        time.sleep(post)
        window.stop = time.time()
        windows.append(window)
        print(f"chaos: {name}: {window.note}; window {window.end - window.start:.1f} s")
    stop.touch()
    locust.exit_code = process.wait()
    rows = locust.rows()
    scenarios = []
    for name, window in zip(names, windows, strict=True):
        segment = [r for r in rows if window.baseline <= r["t0"] < window.stop]
        scenarios.append(Scenario(name, run_id, provisioned, before, locust, window, rows=segment))
    scenarios[0].all_rows = rows
    return scenarios


def answered_but_unsettled(database_url: str, rows: list[dict[str, Any]]) -> list[str]:
    """Diagnosis when the oracle fails: answered (2xx) requests whose hold was not settled (released or expired:
    served for free), from the stack's own database (the hold's request_id is the X-Request-Id the client saw)."""
    answered = {r["gateway_id"]: r for r in rows if r.get("gateway_id") and 200 <= r["status"] < 300}
    if not answered:
        return []

    async def query() -> list[tuple[str, str, int]]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    sa.text("SELECT request_id, status, charged FROM holds WHERE status <> 'settled'")
                )
                return [(str(a), str(b), int(c)) for a, b, c in found if a in answered]
        finally:
            await engine.dispose()

    lines = []
    for request_id, status, charged in run_sync(query()):
        r = answered[request_id]
        kind = "stream" if r.get("stream") else "chat"
        lines.append(
            f"{kind} {r.get('rid')} answered {r['status']} at {datetime.fromtimestamp(r['t1'], UTC):%H:%M:%S.%f} "
            f"but its hold was {status} (charged {charged / 100:.2f})"
        )
    return lines


def mispriced(database_url: str, rows: list[dict[str, Any]], upstream: str, pricing: Pricing) -> list[str]:
    """Diagnosis when the oracle fails: every charge in the ledger (``api_usage`` entries, whatever their hold's
    status) that the oracle does not price the same — charged although its client saw a failure or no client row
    names it, or charged other than the price of what the upstream served — with what the upstream recorded."""
    by_gateway_id = {r["gateway_id"]: r for r in rows if r.get("gateway_id") and r.get("rid")}
    served: dict[str, list[Served]] = {}
    for row in httpx.get(f"{upstream}/_fake/served", timeout=60).json():
        s = Served.from_json(row)
        if (found := parse_marker(s.texts)) is not None:
            served.setdefault(found[0], []).append(s)

    async def query() -> list[tuple[str, str, int, int, int]]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    sa.text(
                        "SELECT h.request_id, h.status, -e.amount, h.account_id, h.id FROM ledger_entries e "
                        "JOIN holds h ON h.id = e.hold_id WHERE e.type = 'api_usage'"
                    )
                )
                return [(str(a), str(b), int(c), int(d), int(e)) for a, b, c, d, e in found]
        finally:
            await engine.dispose()

    lines = []
    for request_id, status, charged, account, hold in run_sync(query()):
        r = by_gateway_id.get(request_id)
        if r is None:
            lines.append(
                f"hold {hold} (account {account}, {status}) charged {charged / 100:.2f}: "
                f"no client row names {request_id}"
            )
            continue
        rows_ = [s for s in served.get(r["rid"], []) if s.stream == bool(r.get("stream"))]
        expected = rows_[-1].price(pricing) if rows_ and 200 <= r["status"] < 300 else Decimal(0)
        if Decimal(charged) / 100 == expected:
            continue
        upstream_saw = "; ".join(
            f"usage_sent={s.usage_sent} complete={s.complete} tokens={s.prompt_tokens}+{s.completion_tokens} "
            f"content={len(s.content)}ch max_tokens={s.max_tokens}"
            for s in rows_
        )
        lines.append(
            f"{'stream' if r.get('stream') else 'chat'} {r['rid']} (client: {r['status']}, complete="
            f"{r.get('complete', True)}, hold {hold} {status}) charged {charged / 100:.2f}, oracle {expected};"
            f" upstream: {upstream_saw or 'none'}"
        )
    return lines


def judge(s: Scenario, *, margin: float) -> None:
    f = figures(s.rows, s.window, margin=margin)
    s.figures.update(f)
    if s.locust.exit_code != 0:
        s.problems.append(f"locust exited {s.locust.exit_code}")
    if not f["requests"] or not f["paid"]:
        s.problems.append("no paid request: nothing was tested")
    if f["errors_outside"]:
        s.problems.append(f"{f['errors_outside']} 5xx/unanswered requests outside the fault window")
    other_4xx = f["classes"].get("4xx", 0)
    if other_4xx:
        s.problems.append(f"{other_4xx} 4xx answers other than 402/429")
    if f["recovery_s"] is None:
        s.problems.append("throughput never came back within the margin")
    elif f["post_rps"] < (1 - margin) * f["baseline_rps"]:
        s.problems.append(
            f"throughput after recovery {f['post_rps']:.1f} req/s < {1 - margin:.0%} of the baseline "
            f"{f['baseline_rps']:.1f} req/s"
        )
    if s.oracle is None or not s.oracle.ok:
        s.problems.append("money oracle: " + ("did not run" if s.oracle is None else "FAILED"))
    if s.audit is None or not s.audit.ok:
        s.problems.append("ledger audit: " + ("did not run" if s.audit is None else "FAILED"))


def table(scenarios: list[Scenario]) -> str:
    head = (
        "| scenario | requests | 2xx | 402 | 429 | 4xx | 5xx | no answer | 5xx+no answer in window / outside "
        "| fault window | recovery | throughput before → after | oracle | auditor | result |"
    )
    lines = [head, "|" + "---|" * 15]
    for s in scenarios:
        f, c = s.figures, s.figures.get("classes", {})
        oracle = "—" if s.oracle is None else ("pass" if s.oracle.ok else "FAIL")
        if s.oracle is not None:
            held = sum(a.indeterminate for a in s.oracle.accounts.values())
            oracle += f" ({held} indeterminate)"
        audit = "—" if s.audit is None else ("pass" if s.audit.ok else f"FAIL ({len(s.audit.violations)})")
        recovery = "not recovered" if f.get("recovery_s") is None else f"{f['recovery_s']:.1f} s"
        lines.append(
            f"| {s.name} | {f.get('requests', 0)} | {c.get('2xx', 0)} | {c.get('402', 0)} | {c.get('429', 0)} "
            f"| {c.get('4xx', 0)} | {c.get('5xx', 0)} | {c.get('other', 0)} | {f.get('errors_inside', 0)} / "
            f"{f.get('errors_outside', 0)} | {s.window.end - s.window.start:.1f} s | {recovery} "
            f"| {f.get('baseline_rps', 0):.1f} → {f.get('post_rps', 0):.1f} req/s | {oracle} | {audit} "
            f"| {'PASS' if not s.problems else 'FAIL'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI: 8 users, every fault in one run, short periods")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--baseline", type=float, default=None, help="seconds of load before each fault")
    parser.add_argument("--post", type=float, default=None, help="seconds of load after each recovery")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers")
    parser.add_argument("--processes", type=int, default=1, help="locust processes")
    parser.add_argument("--margin", type=float, default=0.5, help="throughput after recovery >= (1 - margin) x before")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if unknown := [n for n in names if n not in SCENARIOS]:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    users = args.users or (8 if args.short else 20)
    members = args.members or (3 if args.short else 6)
    baseline = args.baseline or (3.0 if args.short else 6.0)
    post = args.post or (4.0 if args.short else 8.0)
    down, storm = (1.5, 3.0) if args.short else (3.0, 6.0)
    began = time.monotonic()
    out = REPORTS / f"chaos-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out.mkdir(parents=True)
    stack = Stack(out, workers=args.workers, backend="local")
    runs: list[list[Scenario]] = []
    whole: AuditReport | None = None
    try:
        stack.start()
        print(f"chaos: private {stack.postgres}; private {stack.redis}; gateway {stack.url} ({args.workers} workers)")
        admin = Admin(stack.url, stack.admin_key)
        kw: dict[str, Any] = {"users": users, "members": members, "baseline": baseline, "post": post}
        kw |= {"down": down, "storm": storm, "processes": args.processes}
        for group in [names] if args.short else [[n] for n in names]:
            runs.append(run_segments(group, stack, admin, out, **kw))
        accounts = sorted({a for run in runs for a in run[0].provisioned.accounts})
        since = min(run[0].before["last_entry_id"] for run in runs)
        wait_for_holds(admin, accounts, since_entry=since, sweep_grace=SWEEP_INTERVAL + 5, max_wait=HOLD_TTL + 20)
        for run in runs:
            first = run[0]
            after = admin.audit(first.provisioned.accounts, since_entry=first.before["last_entry_id"])
            oracle = money_oracle(
                target=stack.url,
                admin=admin,
                upstream=stack.upstream_url,
                stripe=stack.stripe_url,
                rows=first.all_rows or [],
                before=first.before,
                after=after,
                margin=Decimal("1.5"),
                credit_value_usd=Decimal("0.01"),
            )
            audit = endpoint_audit(admin, first.provisioned.accounts, grace=SWEEP_INTERVAL + 5)
            if not oracle.ok:
                oracle.notes += answered_but_unsettled(stack.database_url, first.all_rows or [])
                pricing = Pricing.from_catalog(
                    httpx.get(f"{stack.url}/catalog/models", timeout=30).json(),
                    margin=Decimal("1.5"),
                    credit_value_usd=Decimal("0.01"),
                    increment=admin.increment(),
                )
                oracle.notes += mispriced(stack.database_url, first.all_rows or [], stack.upstream_url, pricing)
            for s in run:
                s.oracle, s.audit = oracle, audit
                judge(s, margin=args.margin)
            deactivate(admin, first.provisioned)
        whole = audit_url(stack.database_url)
        admin.close()
    finally:
        stack.stop()
    scenarios = [s for run in runs for s in run]
    report = [table(scenarios), ""]
    for run in runs:
        names_ = ", ".join(s.name for s in run)
        for s in run:
            w = s.window
            report.append(
                f"{s.name} window: {datetime.fromtimestamp(w.start, UTC):%H:%M:%S.%f} → "
                f"{datetime.fromtimestamp(w.end, UTC):%H:%M:%S.%f}"
            )
        report.append(f"{names_} (run {run[0].run_id}):")
        report += [f"  {line}" for line in str(run[0].oracle).splitlines()]
        for s in run:
            report.append(f"  {s.name}: {s.window.note}")
            report += [f"    FAILED: {p}" for p in s.problems]
    report.append(f"whole database: {whole}")
    elapsed = time.monotonic() - began
    mode = "short: every fault in one run" if args.short else "one run per fault"
    report.append(
        f"chaos ({mode}): {len(scenarios)} scenarios, {users} users, {baseline:.0f} s baseline and {post:.0f} s after "
        f"each fault, margin {args.margin:.0%}, wall time {elapsed:.0f} s; files in {out}"
    )
    text = "\n".join(report)
    (out / "chaos.md").write_text(text + "\n")
    print(text)
    failed = [s.name for s in scenarios if s.problems]
    if whole is None or not whole.ok:
        failed.append("whole-database audit")
    if len(scenarios) != len(names):
        failed.append("not every scenario ran")
    print("chaos: FAILED: " + ", ".join(failed) if failed else "chaos: PASSED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
