"""Run the load scenarios end to end and judge them: `python -m suites.load.run` (what `nox -s load` runs).

1. Postgres and Redis from the harness (external URL, Docker or local binaries); a fresh database.
2. The fake provider as a server, the gateway with N workers on loopback, users and an org seeded.
3. locust headless in its own process (gevent must not share a process with pytest), bounded in users and time,
   writing CSV and HTML to reports/.
4. The ledger auditor on the database; fail on any violation, any 5xx, an error rate or p95 over the thresholds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.orgs import service as orgs
from creditgate.quotas.service import load_plans, set_plan
from creditgate_harness.auditor import audit_url
from creditgate_harness.catalog import catalog_for_tests
from creditgate_harness.fixtures.database import _admin, asyncpg_url, migrate
from creditgate_harness.fixtures.live_server import start_gateway
from creditgate_harness.services import start_postgres, start_redis
from creditgate_harness.services.base import free_port, run_sync

REPORTS = Path("reports")


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
        from creditgate.ledger import service as ledger

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


def stats() -> dict[str, float]:
    with (REPORTS / "load_stats.csv").open() as f:
        total = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    return {
        "requests": requests,
        "failures": failures,
        "rps": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p95_ms": float(total["95%"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=40, help="concurrent locust users")
    parser.add_argument("--time", default="30s", help="run time (locust syntax)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--max-error-rate", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=2000.0)
    args = parser.parse_args()
    REPORTS.mkdir(exist_ok=True)

    postgres, redis = start_postgres(os.environ.get("HARNESS_SERVICES", "auto")), start_redis()
    name = f"cg_load_{uuid.uuid4().hex[:8]}"
    run_sync(_admin(postgres.url, f'CREATE DATABASE "{name}"'))
    url = asyncpg_url(postgres.url, name)
    migrate(url)
    keys = run_sync(seed(url, users=args.users, members=10))
    keys_file = REPORTS / "load_keys.json"
    keys_file.write_text(json.dumps(keys))

    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "creditgate_harness.fakes.providers", "--port", str(fake_port)])
    catalog = REPORTS / "load_catalog.json"
    catalog.write_text(catalog_for_tests(f"http://127.0.0.1:{fake_port}/v1").model_dump_json())
    gateway = start_gateway(
        env={
            "CREDITGATE_DATABASE_URL": url,
            "CREDITGATE_REDIS_URL": redis.url,
            "CREDITGATE_CATALOG": str(catalog),
            "CREDITGATE_STRIPE_WEBHOOK_SECRET": "whsec_load",
            "CREDITGATE_STRIPE_SECRET_KEY": "sk_test_load",
        },
        log_path=REPORTS / "load_gateway.log",
        workers=args.workers,
    )
    try:
        locust = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                "suites/load/locustfile.py",
                "--headless",
                "-u",
                str(args.users),
                "-r",
                str(max(args.users // 4, 1)),
                "-t",
                args.time,
                "--host",
                gateway.url,
                "--only-summary",
                "--csv",
                str(REPORTS / "load"),
                "--html",
                str(REPORTS / "load.html"),
                "--exit-code-on-error",
                "0",
            ],
            env={**os.environ, "LOAD_KEYS_FILE": str(keys_file), "LOAD_WEBHOOK_SECRET": "whsec_load"},
            check=False,
        )
    finally:
        gateway.stop()
        fake.terminate()
    report = audit_url(url)
    figures = stats()
    print(f"\nload: {args.users} users, {args.time}, {args.workers} gateway workers")
    print(
        f"load: {figures['requests']:.0f} requests, {figures['failures']:.0f} failures, {figures['rps']:.1f} req/s, "
        f"p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms"
    )
    print(report)
    run_sync(_admin(postgres.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    postgres.stop()
    redis.stop()
    error_rate = figures["failures"] / max(figures["requests"], 1)
    problems = []
    if locust.returncode not in (0, 1):
        problems.append(f"locust exited {locust.returncode}")
    if not report.ok:
        problems.append("ledger audit failed")
    if error_rate > args.max_error_rate:
        problems.append(f"error rate {error_rate:.2%} > {args.max_error_rate:.2%}")
    if figures["p95_ms"] > args.max_p95_ms:
        problems.append(f"p95 {figures['p95_ms']:.0f} ms > {args.max_p95_ms:.0f} ms")
    if figures["requests"] == 0:
        problems.append("no requests were made")
    for problem in problems:
        print(f"load: FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
