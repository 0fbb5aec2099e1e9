"""Builds of the gateway side by side: CPU µs per request, RPS and p50, the code before a change against after.

    python -m bench.ab --ref main~3 [--ref v0.4] [--concurrency 32] [--rounds 5] [--seconds 3]
    python -m bench.ab --levers bench/levers.toml      # each lever of the hot path, oldest first

Each ref's ``app/`` is exported with ``git archive`` into a temporary directory and served by uvicorn (one worker)
with that directory first on ``PYTHONPATH``; the working tree is served too. Each build has a Postgres database of
its own, migrated by its own code (``python -m creditgate.cli migrate``), so builds whose schemas differ compare
too; all share one fake upstream. In each round every build is started, measured with wrk and stopped in turn (one
gateway at a time holds database connections), so the noise of a shared machine falls on every build alike.
Medians over the rounds are printed, each build's change from the one above it, and each round's CPU time per
request (the server processes' user + system time over the requests wrk counted: bench/servers.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.common import fake_upstream, postgres_database
from bench.overhead import WRK, Cell, _keys, measure_wrk
from bench.servers import start
from creditgate.testing.catalog import catalog_for_tests
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


@dataclass(frozen=True)
class Build:
    name: str
    path: Path | None  # the exported app/ of a ref; None: the working tree
    env: dict[str, str]
    headers: list[dict[str, str]]


def _levers(path: Path) -> list[tuple[str, str]]:
    """``(ref, name)`` of each ``[[lever]]`` in a TOML file, oldest first."""
    return [(lever["ref"], lever["name"]) for lever in tomllib.loads(path.read_text())["lever"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", action="append", default=[], help="a git ref to serve beside the working tree")
    parser.add_argument("--levers", type=Path, help="a TOML file of [[lever]] ref/name pairs, oldest first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    if WRK is None:
        raise SystemExit("bench.ab: wrk not found — apt-get install wrk")
    named = [(ref, ref) for ref in args.ref] + (_levers(args.levers) if args.levers else [])
    if not named:
        raise SystemExit("bench.ab: give --ref or --levers")
    root = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    paths: dict[str, Path | None] = {name: export(ref, root / f"ref{i}") for i, (ref, name) in enumerate(named)}
    paths["working tree"] = None
    with fake_upstream() as fake_url, ExitStack() as databases:
        (root / "catalog.json").write_text(catalog_for_tests(f"{fake_url}/v1").model_dump_json())
        builds = []
        for name, path in paths.items():
            url, _ = databases.enter_context(postgres_database("cg_ab"))
            migrate(url, path)
            keys = run_sync(_keys(url, shared_org=False))
            env = {"CREDITGATE_DATABASE_URL": url, "CREDITGATE_CATALOG": str(root / "catalog.json")}
            env |= {"PYTHONPATH": str(path)} if path is not None else {}
            builds.append(Build(name, path, env, [{"Authorization": f"Bearer {key}"} for key in keys]))
        cells: dict[str, list[Cell]] = {build.name: [] for build in builds}
        for _ in range(args.rounds):
            for build in builds:  # one server at a time: the others' connections never crowd the database server
                server = start("uvicorn", env=build.env, log_path=root / f"{len(cells[build.name])}-{build.name}.log")
                try:
                    assert server.process is not None
                    url = f"{server.url}/v1/chat/completions"
                    cell = measure_wrk(url, build.headers, concurrency=args.concurrency, seconds=args.seconds,
                                       pid=server.process.pid)  # fmt: skip
                finally:
                    server.stop()
                cells[build.name].append(cell)
    print(f"c={args.concurrency}, {args.rounds} rounds of {args.seconds:g} s, medians; one uvicorn worker each")
    print(f"{'build':>44} {'rps':>7} {'p50':>9} {'CPU/req':>9} {'change':>8}  each round's CPU/req")
    previous = None
    for name, runs in cells.items():
        rps, p50 = statistics.median(c[0] for c in runs), statistics.median(c[1] for c in runs)
        cpu = statistics.median(c[3] for c in runs)
        change = f"{cpu - previous:+.0f}µs" if previous is not None else ""
        each = ", ".join(f"{c[3]:.0f}" for c in runs)
        print(f"{name[:44]:>44} {rps:>7.0f} {p50:>7.2f}ms {cpu:>7.0f}µs {change:>8}  {each}")
        previous = cpu


if __name__ == "__main__":
    main()
