"""Run the load scenarios against creditgate end to end and judge them: `python -m suites.load.run` (`nox -s load`).

The generic runner is the harness's (creditgate_harness.load: locust scenarios, the money oracle, the judge);
creditgate is one adapter of it (suites/load/adapter.py: the admin API). Two modes:

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
  request at all fail the run (creditgate_harness/load/summary.py);
- the **money oracle** (creditgate_harness/oracle.py) when the fake upstream's and the fake Stripe's records are
  reachable (always on loopback; ``--fake-upstream``/``--fake-stripe`` for a target wired to the fakes): each
  account's books against what was served and paid;
- the **ledger auditor**: on ``--database-url`` when given (the harness auditor), else the audit endpoint;
- the **generator's ceiling**: the same chat scenarios against a bare fake upstream, with 1 and 2 locust processes,
  in the same run, so the report says whether the gateway or the generator was the limit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from creditgate_harness.load import runner
from creditgate_harness.load.adapter import Accounts
from creditgate_harness.load.runner import LocustRun, ceilings_for, report, run_against
from creditgate_harness.services import start_postgres
from suites.load.adapter import SPEC, Creditgate, clients_from_keys, endpoint_audit, money_oracle
from suites.load.stack import HOLD_TTL, SWEEP_INTERVAL, WEBHOOK_SECRET, Stack

REPORTS = Path("reports/load")
# start_postgres: the loopback stack's (tests replace it); the rest: the chaos runner's (suites/chaos/run.py)
__all__ = ["REPORTS", "LocustRun", "endpoint_audit", "main", "money_oracle", "start_locust", "start_postgres"]


def start_locust(
    out: Path, *, env: dict[str, str] | None = None, **kw: Any
) -> tuple[LocustRun, subprocess.Popen[bytes]]:
    """The harness's ``start_locust`` with creditgate's adapter; ``env["LOAD_KEYS_FILE"]`` names the clients
    (a ``Provisioned.keys_file()``), ``env["LOAD_MODEL"]`` the chat scenarios' model."""
    env = dict(env or {})
    keys = Path(env.pop("LOAD_KEYS_FILE"))
    plan = keys.with_name(f"{keys.stem}-plan.json")
    clients = clients_from_keys(json.loads(keys.read_text()))
    plan.write_text(json.dumps(Accounts(keys.stem, clients, []).plan()))
    env.setdefault("LOAD_WEBHOOK_SECRET", WEBHOOK_SECRET)
    options = {"model": env.pop("LOAD_MODEL", "gpt-4o")}
    return runner.start_locust(out, adapter=SPEC, plan=plan, options=options, env=env, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner.add_run_options(parser)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (loopback)")
    parser.add_argument("--model", default="gpt-4o", help="the model the chat scenarios ask for")
    parser.add_argument("--hold-wait", type=float, default=90.0, help="wait at most this long for open holds (s)")
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
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        print(f"load: FAILED: locust is not installed for {sys.executable} (nox -s load installs it)")
        return 1
    if args.target and not args.admin_key:
        parser.error("--target needs --admin-key (or LOAD_ADMIN_KEY)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    args.run_id = args.run_id or stamp.replace("T", "").replace("Z", "").lower()
    out = args.out / stamp
    out.mkdir(parents=True)
    ceilings = ceilings_for(out, args)

    def run(target: str, admin_key: str, upstream: str | None, stripe: str | None, **options: str) -> runner.RunResult:
        options = {
            "admin_key": admin_key,
            "model": args.model,
            "margin": str(args.margin),
            "credit_value_usd": str(args.credit_value_usd),
            "audit_scope": args.audit_scope,
            "hold_wait": str(args.hold_wait),
            "key_ttl": str(int(args.duration) + 6 * 3600),
            **options,
        }
        return run_against(
            out,
            adapter=Creditgate(target, **options),
            spec=SPEC,
            target=target,
            args=args,
            options={"model": args.model},  # all locust's processes need: they only make requests
            upstream=upstream,
            stripe=stripe,
        )

    if args.target:
        options = {"sweep_grace": str(args.sweep_grace), "database_url": args.database_url or ""}
        result = run(args.target.rstrip("/"), args.admin_key, args.fake_upstream, args.fake_stripe, **options)
        where = f"target {args.target}"
    else:
        stack = Stack(out, workers=args.workers, backend=os.environ.get("HARNESS_SERVICES", "auto"))
        try:
            stack.start()
            args.webhook_secret = WEBHOOK_SECRET
            options = {"sweep_grace": str(SWEEP_INTERVAL + 5), "database_url": stack.database_url}
            result = run(stack.url, stack.admin_key, stack.upstream_url, stack.stripe_url, **options)
        finally:
            stack.stop()
        where = f"loopback, {args.workers} gateway workers, hold TTL {HOLD_TTL} s"
    return report(out, result, args=args, ceilings=ceilings, where=where, oracle_required=args.target is None)


if __name__ == "__main__":
    sys.exit(main())
