"""Mutation testing of the money path (``nox -s mutants``): mutmut per shard, one score, one gate.

Each shard in ``[tool.creditgate.mutants.shards]`` (pyproject.toml) names the modules to mutate and the
tests that should notice. mutmut 3 imports mutated code only from ``./``, ``src/`` or ``source/``, while
our package lives in ``app/creditgate``; so each shard gets a workspace under ``build/mutants/<shard>/``
shaped as mutmut expects: ``src/creditgate`` (a copy that keeps file times, so mutmut's cache holds
between runs), the suites, and this pyproject with a ``[tool.mutmut]`` table for the shard. The harness
and the dependencies come from the installed environment.

Verdicts are kept between runs only for killed mutants (mutmut would otherwise keep a survivor's verdict after a
new test kills it); ``--fresh`` forgets them all. Score = killed / (mutants − marked equivalent). Killed counts
mutmut's "killed", "timeout" and "caught by type check"; "survived" and "no tests" count against. Equivalent
mutants are listed, each with a one-line reason, in ``tools/mutants_equivalent.toml``. The run fails below
``min_score`` in any shard, when mutmut fails (its clean run must pass), or when a shard produced no mutants.

    python tools/mutation_run.py                  # every shard
    python tools/mutation_run.py --shard money    # one (repeatable)
    python tools/mutation_run.py --list           # the shards and what they mutate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutants"
REPORTS = ROOT / "reports" / "mutants"
EQUIVALENTS = ROOT / "tools" / "mutants_equivalent.toml"

TIMEOUT_MULTIPLIER = 5.0  # a mutant's tests may take 5× their clean run's time before it counts as a timeout
KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # killed, pytest internal error, timeouts, caught by type check
NOT_CHECKED = {None}


@dataclass
class Shard:
    name: str
    mutate: list[str]
    tests: list[str]


@dataclass
class Result:
    shard: Shard
    seconds: float
    exit_code_by_key: dict[str, int | None] = field(default_factory=dict)

    def counts(self, equivalent: dict[str, str]) -> tuple[int, int, list[str]]:
        """(killed, scored, names not killed and not equivalent)."""
        killed, scored, open_ = 0, 0, []
        for key, code in sorted(self.exit_code_by_key.items()):
            if key in equivalent:
                continue
            scored += 1
            if code in KILLED:
                killed += 1
            else:
                open_.append(key)
        return killed, scored, open_


def load_config() -> tuple[float, list[Shard]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["creditgate"]["mutants"]
    shards = [Shard(name, spec["mutate"], spec["tests"]) for name, spec in config["shards"].items()]
    return float(config["min_score"]), shards


def load_equivalents() -> dict[str, str]:
    if not EQUIVALENTS.exists():
        return {}
    return {key: str(reason) for key, reason in tomllib.loads(EQUIVALENTS.read_text()).items()}


def workspace(shard: Shard) -> Path:
    """build/mutants/<shard>: src/creditgate, the suites and a pyproject whose [tool.mutmut] is this shard."""
    ws = BUILD / shard.name
    src = ws / "src" / "creditgate"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "app" / "creditgate", src, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("suites", "conftest.py"):
        link = ws / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    mutmut = {
        "source_paths": ["src"],
        "only_mutate": [f"src/creditgate/{pattern}" for pattern in shard.mutate],
        "pytest_add_cli_args_test_selection": shard.tests,
        # One process per mutant, no coverage: mutmut runs its own workers.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:cov", "-q"],
        "also_copy": ["suites", "conftest.py"],
        # A mutant that makes a test hang (the batcher never answering) is a timeout, which counts as killed; at
        # mutmut's default (15× the tests' time) each such mutant of ledger/fast.py cost ~90 s of waiting.
        "timeout_multiplier": TIMEOUT_MULTIPLIER,
    }
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in mutmut.items())
    (ws / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + f"\n[tool.mutmut]\n{table}\n")
    return ws


def forget_open_verdicts(ws: Path, *, fresh: bool) -> None:
    """mutmut keeps a verdict, and its map of which tests reach which function, until the mutated function changes,
    so a test added since would not count: the map is rebuilt and every verdict but "killed" re-tested (``--fresh``
    clears the killed ones too)."""
    if fresh:
        shutil.rmtree(ws / "mutants", ignore_errors=True)
        return
    # Which tests reach which function: collected again, so a test added since the last run is mapped too.
    (ws / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    for meta in (ws / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        data["exit_code_by_key"] = {key: code if code in KILLED else None for key, code in codes.items()}
        meta.write_text(json.dumps(data))


def run_shard(shard: Shard, *, fresh: bool) -> Result:
    ws = workspace(shard)
    forget_open_verdicts(ws, fresh=fresh)
    REPORTS.mkdir(parents=True, exist_ok=True)
    log = REPORTS / f"{shard.name}.log"
    started = time.monotonic()
    mutmut = shutil.which("mutmut", path=os.path.dirname(sys.executable)) or "mutmut"
    print(f"[{shard.name}] mutmut run: {', '.join(shard.mutate)} against {' '.join(shard.tests)}", flush=True)
    with log.open("w") as out:
        code = subprocess.call([mutmut, "run"], cwd=ws, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-25:]
        sys.exit(f"[{shard.name}] mutmut exited {code} (its clean run must pass); log {log}:\n" + "\n".join(tail))
    result = Result(shard, seconds)
    for meta in (ws / "mutants" / "src").rglob("*.meta"):
        source = meta.with_suffix("").relative_to(ws / "mutants" / "src").as_posix().removeprefix("creditgate/")
        if not any(Path(source).match(pattern) for pattern in shard.mutate):
            continue  # left from an earlier shard definition
        result.exit_code_by_key.update(json.loads(meta.read_text())["exit_code_by_key"])
    return result


def show(ws: Path, key: str) -> str:
    mutmut = shutil.which("mutmut", path=os.path.dirname(sys.executable)) or "mutmut"
    diff = subprocess.run([mutmut, "show", key], cwd=ws, capture_output=True, text=True).stdout
    return "\n".join(
        "      " + line for line in diff.splitlines() if line.startswith(("-", "+")) and line[:3] not in ("---", "+++")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", action="append", default=[], help="run only this shard (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the shards and exit")
    parser.add_argument("--fresh", action="store_true", help="forget every earlier verdict (killed ones too)")
    args = parser.parse_args(argv)

    min_score, shards = load_config()
    if args.list:
        for shard in shards:
            print(f"{shard.name:10} mutate {', '.join(shard.mutate)}; tests {' '.join(shard.tests)}")
        return 0
    unknown = set(args.shard) - {shard.name for shard in shards}
    if unknown:
        parser.error(
            f"unknown shard(s) {sorted(unknown)}; [tool.creditgate.mutants.shards] has {[s.name for s in shards]}"
        )
    chosen = [shard for shard in shards if not args.shard or shard.name in args.shard]
    equivalent = load_equivalents()

    results = [run_shard(shard, fresh=args.fresh) for shard in chosen]
    failed = False
    print(f"\nmutation score (killed / (mutants - equivalent)), gate {min_score:.0f} % per shard")
    print(f"{'shard':10} {'mutants':>8} {'equiv':>6} {'killed':>7} {'open':>5} {'score':>7} {'time':>7}")
    total_killed = total_scored = 0
    for result in results:
        killed, scored, open_ = result.counts(equivalent)
        marked = len(result.exit_code_by_key) - scored
        score = 100.0 * killed / scored if scored else 0.0
        total_killed, total_scored = total_killed + killed, total_scored + scored
        verdict = "" if scored and score >= min_score else "  << below the gate" if scored else "  << no mutants"
        failed |= bool(verdict)
        print(
            f"{result.shard.name:10} {len(result.exit_code_by_key):>8} {marked:>6} {killed:>7} {len(open_):>5}"
            f" {score:>6.1f}% {result.seconds:>6.0f}s{verdict}"
        )
    if total_scored:
        print(
            f"{'all':10} {'':>8} {'':>6} {total_killed:>7} {total_scored - total_killed:>5}"
            f" {100.0 * total_killed / total_scored:>6.1f}%"
        )
    for result in results:
        _, _, open_ = result.counts(equivalent)
        if open_:
            print(
                f"\n[{result.shard.name}] survivors (kill with a test,"
                f" or list in {EQUIVALENTS.relative_to(ROOT)} with a reason):"
            )
            for key in open_:
                status = "no tests" if result.exit_code_by_key[key] in (5, 33) else "survived"
                print(f"  {key} ({status})\n{show(BUILD / result.shard.name, key)}")
    stale = sorted(set(equivalent) - {key for result in results for key in result.exit_code_by_key})
    if stale and not args.shard:
        print(f"\nequivalents that no longer exist (remove them from {EQUIVALENTS.name}): {stale}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
