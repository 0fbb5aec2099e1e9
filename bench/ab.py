"""Builds of the gateway side by side: CPU µs per request, RPS and p50, the code before a change against after.

    python -m bench.ab --ref main~3 [--ref v0.4] [--concurrency 32] [--rounds 5] [--seconds 3]

Each ``--ref``'s ``app/`` is exported with ``git archive`` into a temporary directory and served by uvicorn (one
worker) with that directory first on ``PYTHONPATH``; the working tree is served too, as ``worktree``. Each build
has a Postgres database of its own, migrated by its own code (``python -m creditgate.cli migrate``), so builds
whose schemas differ compare too; all share one fake upstream and the same 32 users, and wrk's rounds alternate
between them, so the noise of a shared machine falls on every build alike. Medians over the rounds are printed,
with each round's CPU time per request (the server processes' user + system time over the requests wrk counted:
bench/servers.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.common import fake_upstream, postgres_database
from bench.overhead import WRK, Cell, _keys, measure_wrk
from bench.servers import start
from creditgate.testing.catalog import catalog_for_tests
from creditgate_harness.servers import LiveServer
from creditgate_harness.services.base import run_sync

ROOT = Path(__file__).resolve().parent.parent


def export(ref: str, into: Path) -> Path:
    """``ref``'s ``app/`` under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref, "app"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "app"


def migrate(url: str, path: Path | None) -> None:
    """The database at ``url`` at the head of the schema of the build at ``path`` (the working tree: ``None``)."""
    env = {**os.environ, "CREDITGATE_DATABASE_URL": url} | ({"PYTHONPATH": str(path)} if path is not None else {})
    subprocess.run([sys.executable, "-m", "creditgate.cli", "migrate"], env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", action="append", required=True, help="a git ref to serve beside the working tree")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument(
        "--pool-size",
        type=int,
        default=8,
        help="CREDITGATE_DB_POOL_SIZE of every build: several gateways share one server's max_connections (100)",
    )
    args = parser.parse_args()
    if WRK is None:
        raise SystemExit("bench.ab: wrk not found — apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    paths: dict[str, Path | None] = {ref: export(ref, (root / f"ref{i}")) for i, ref in enumerate(args.ref)}
    paths["worktree"] = None
    with fake_upstream() as fake_url, ExitStack() as databases:
        (root / "catalog.json").write_text(catalog_for_tests(f"{fake_url}/v1").model_dump_json())
        servers: dict[str, LiveServer] = {}
        headers: dict[str, list[dict[str, str]]] = {}
        try:
            for name, path in paths.items():
                url, _ = databases.enter_context(postgres_database("cg_ab"))
                migrate(url, path)
                headers[name] = [{"Authorization": f"Bearer {key}"} for key in run_sync(_keys(url, shared_org=False))]
                env = {
                    "CREDITGATE_DATABASE_URL": url,
                    "CREDITGATE_CATALOG": str(root / "catalog.json"),
                    "CREDITGATE_DB_POOL_SIZE": str(args.pool_size),
                }
                extra = {"PYTHONPATH": str(path)} if path is not None else {}
                servers[name] = start("uvicorn", env=env | extra, log_path=root / f"{name.replace('/', '_')}.log")
            cells: dict[str, list[Cell]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    assert server.process is not None
                    cells[name].append(
                        measure_wrk(
                            f"{server.url}/v1/chat/completions",
                            headers[name],
                            concurrency=args.concurrency,
                            seconds=args.seconds,
                            pid=server.process.pid,
                        )
                    )
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"c={args.concurrency}, {args.rounds} rounds of {args.seconds:g} s, medians; one uvicorn worker each, "
        f"CREDITGATE_DB_POOL_SIZE={args.pool_size}"
    )
    print(f"{'build':>24} {'rps':>7} {'p50':>9} {'CPU/req':>9}  each round's CPU/req")
    for name, runs in cells.items():
        rps, p50 = statistics.median(c[0] for c in runs), statistics.median(c[1] for c in runs)
        cpu = statistics.median(c[3] for c in runs)
        each = ", ".join(f"{c[3]:.0f}" for c in runs)
        print(f"{name:>24} {rps:>7.0f} {p50:>7.2f}ms {cpu:>7.0f}µs  {each}")


if __name__ == "__main__":
    main()
