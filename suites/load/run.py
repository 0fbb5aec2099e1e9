"""Run the load scenarios end to end and judge them: `python -m suites.load.run` (what `nox -s load` runs).

1. Postgres and Redis from the harness (external URL, Docker or local binaries); a fresh database.
2. The fake provider as a server, the gateway with N workers on loopback, users and an org seeded.
3. locust headless in its own process (gevent must not share a process with pytest), bounded in users and time,
   writing into a fresh reports/load/<run-id>/: its final stats (stats.json), the status counts of the
   locustfile (statuses.json) and an HTML report.
4. The ledger auditor on the database. Exit 1 when locust is missing or did not finish, on any 5xx, an error
   rate or p95 over the thresholds, an audit violation, or no paid request at all (suites/load/summary.py).
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

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.ledger import service as ledger
from creditgate.orgs import service as orgs
from creditgate.quotas.service import load_plans, set_plan
from creditgate_harness.auditor import AuditReport, audit_url
from creditgate_harness.catalog import catalog_for_tests
from creditgate_harness.gateway import migrate, start_gateway
from creditgate_harness.services import start_postgres, start_redis
from creditgate_harness.services.base import free_port, run_sync
from creditgate_harness.services.postgres import create_database, drop_database
from suites.load.summary import NoResults, problems, read_summary, table

REPORTS = Path("reports/load")


async def seed(url: str, *, users: int, members: int) -> dict[str, list[str]]:
    engine = create_engine(url)
    keys: dict[str, list[str]] = {"users": [], "org_members": []}
    plans = load_plans()
    async with create_sessionmaker(engine)() as s, s.begin():
        for i in range(users):
            user, _ = await auth.create_user(s, email=f"load{i}@example.test", credits=Decimal(50))
            keys["users"].append(await auth.issue_key(s, user_id=user.id))
            await set_plan(s, subject=f"user:{user.id}", plan="enterprise", plans=plans)
        owner, _ = await auth.create_user(s, email="owner@example.test")
        principal = await auth.principal_for(
            s, user_id=owner.id, email=owner.email, is_admin=False, personal_account_id=0
        )
        org = await orgs.create(s, name="Load Org", creator=principal)
        await set_plan(s, subject=f"org:{org.id}", plan="enterprise", plans=plans)
        await ledger.post_entry(
            s,
            account_id=await orgs.org_account_id(s, org.id),
            amount=Decimal(200),
            type="bonus",
            description="load org",
        )
        for i in range(members):
            member, _ = await auth.create_user(s, email=f"member{i}@example.test")
            await orgs.add_member(s, org_id=org.id, email=member.email, allocation=Decimal(20))
            keys["org_members"].append(await auth.issue_key(s, user_id=member.id))
    await engine.dispose()
    return keys


def run_locust(out: Path, *, host: str, users: int, time: str) -> int:
    """locust headless, writing its final stats and the status counts into ``out``; its exit code.

    ``--json-file stats`` writes stats.json (locust adds the suffix) at exit, from the final figures;
    the CSV files are rewritten only every second, so their last version may miss the end of the run.
    """
    args = ["--headless", "--only-summary", "-u", str(users), "-r", str(max(users // 4, 1)), "-t", time]
    args += ["--host", host, "--json-file", str(out / "stats"), "--html", str(out / "report.html")]
    env = {"LOAD_KEYS_FILE": str(out / "keys.json"), "LOAD_STATUS_FILE": str(out / "statuses.json")}
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", "suites/load/locustfile.py", *args, "--exit-code-on-error", "0"],
        env={**os.environ, **env, "LOAD_WEBHOOK_SECRET": "whsec_load"},
        check=False,
    ).returncode


def serve_and_load(out: Path, *, url: str, redis_url: str, args: argparse.Namespace) -> int:
    """The fake provider and the gateway for the duration of the locust run; locust's exit code."""
    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "creditgate_harness.fakes.providers", "--port", str(fake_port)])
    catalog = out / "catalog.json"
    catalog.write_text(catalog_for_tests(f"http://127.0.0.1:{fake_port}/v1").model_dump_json())
    try:
        gateway = start_gateway(
            env={
                "CREDITGATE_DATABASE_URL": url,
                "CREDITGATE_REDIS_URL": redis_url,
                "CREDITGATE_CATALOG": str(catalog),
                "CREDITGATE_STRIPE_WEBHOOK_SECRET": "whsec_load",
                "CREDITGATE_STRIPE_SECRET_KEY": "sk_test_load",
            },
            log_path=out / "gateway.log",
            workers=args.workers,
        )
        try:
            return run_locust(out, host=gateway.url, users=args.users, time=args.time)
        finally:
            gateway.stop()
    finally:
        fake.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40, help="concurrent locust users")
    parser.add_argument("--time", default="30s", help="run time (locust syntax)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--max-error-rate", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=2000.0)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        print(f"load: FAILED: locust is not installed for {sys.executable} (nox -s load installs it)")
        return 1
    out = REPORTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out.mkdir(parents=True)

    postgres, redis = start_postgres(os.environ.get("HARNESS_SERVICES", "auto")), start_redis()
    name = f"cg_load_{uuid.uuid4().hex[:8]}"
    try:
        url = create_database(postgres.url, name)
        migrate(url)
        keys = run_sync(seed(url, users=args.users, members=10))
        (out / "keys.json").write_text(json.dumps(keys))
        locust_exit = serve_and_load(out, url=url, redis_url=redis.url, args=args)
        report = audit_url(url)
    finally:
        drop_database(postgres.url, name)
        postgres.stop()
        redis.stop()

    print(f"\nload: {args.users} users, {args.time}, {args.workers} gateway workers; files in {out}")
    found = judge(out, locust_exit=locust_exit, audit=report, args=args)
    for problem in found:
        print(f"load: FAILED: {problem}")
    if not found:
        print("load: PASSED")
    return 1 if found else 0


def judge(out: Path, *, locust_exit: int, audit: AuditReport, args: argparse.Namespace) -> list[str]:
    """Print the run's summary and the ledger audit; return why the run fails (empty when it passes)."""
    found = [] if locust_exit == 0 else [f"locust exited {locust_exit}"]
    try:
        summary = read_summary(out / "stats.json", out / "statuses.json")
        print(table(summary))
        found += problems(summary, max_error_rate=args.max_error_rate, max_p95_ms=args.max_p95_ms)
    except NoResults as exc:
        found.append(str(exc))
    print(audit)
    if not audit.ok:
        found.append("ledger audit failed")
    return found


if __name__ == "__main__":
    sys.exit(main())
