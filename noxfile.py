"""Sessions: `nox -l` lists them; `nox -s ci` is what CI (.ci/run) runs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2026.10.20"  # --parallel and allow_parallel (the checks session)
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "unit", "contract", "e2e", "adversarial"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
COVERAGE_MIN = 85
NO_GATEWAY = "import importlib.util as u, sys; sys.exit(u.find_spec('creditgate') and 'creditgate is installed')"
# What CI runs after the tests, two at a time (`checks`); the chaos run first, as it is the longest.
CHECKS = ("chaos-short", "lint", "typecheck", "coverage", "example", "docs", "mutants-money")


def install(session: nox.Session, *groups: str) -> None:
    """The harness (./harness, its own distribution) and the gateway with its test layer, both editable."""
    deps = [dep for group in groups for dep in nox.project.dependency_groups(PYPROJECT, group)]
    session.install("-e", "./harness", "-e", ".[harness]", *deps)


def beside_chaos(session: nox.Session) -> None:
    """Under `checks` (nox --parallel), a lower CPU priority for this session and what it runs: the chaos run beside
    it compares each fault's throughput after with before, which must not hinge on when a neighbour starts or ends."""
    if session.parallel:
        os.nice(10)


def pytest(session: nox.Session, *args: str) -> None:
    """pytest under pytest-cov with xdist (one process per core); subprocesses are measured too."""
    name = session.name
    session.run(
        "pytest",
        "-n",
        os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "auto"),
        "--dist=worksteal",  # an idle worker takes queued tests from a busy one: no long tail behind a slow test
        "--cov",
        "--cov-report=",
        f"--junitxml=reports/junit-{name}.xml",
        "--durations=15",
        *args,
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{name}"},
    )


@nox.session(allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check (this repo and examples/)."""
    beside_chaos(session)
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(allow_parallel=True)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on creditgate (with creditgate.testing) and creditgate_harness.

    Its incremental cache lives beside uv's, outside the checkout (``MYPY_CACHE_DIR`` to move it), so a fresh clone
    re-checks only what changed: ~2 s against ~40 s cold on this 2-core machine. mypy validates every cached module
    against its source's hash, so a stale cache costs time, never a missed error.
    """
    beside_chaos(session)
    install(session, "test", "lint", "bench")  # bench: granian, which `creditgate serve --server granian` imports
    cache = os.environ.get("MYPY_CACHE_DIR") or str(Path.home() / ".cache" / "creditgate" / "mypy")
    session.run("mypy", "--cache-dir", cache)


@nox.session
def unit(session: nox.Session) -> None:
    """Unit suite (SQLite and Postgres; Postgres from HARNESS_POSTGRES_URL or started locally)."""
    install(session, "test")
    pytest(session, "suites/unit")


@nox.session
def contract(session: nox.Session) -> None:
    """schemathesis against the OpenAPI schema (>= 1,000 cases), the SDKs as clients, fakes vs. the protocols."""
    install(session, "test")
    pytest(session, "suites/contract")


@nox.session
def e2e(session: nox.Session) -> None:
    """End-to-end flows on real Postgres with live uvicorn workers and fake providers on real ports."""
    install(session, "test")
    pytest(session, "suites/e2e", "--flow-report=reports/e2e-report.md")


@nox.session
def adversarial(session: nox.Session) -> None:
    """The suites as an attacker: cost coverage, long streams, noisy neighbours, membership, signed garbage,
    hostile inputs, the tenant matrix (CI runs it inside the tests session's pool)."""
    install(session, "test")
    pytest(session, "suites/adversarial", "--hypothesis-show-statistics")


@nox.session(default=False)
def tests(session: nox.Session) -> None:
    """unit + contract + e2e + adversarial in one xdist pool under coverage (CI's way: one install, every core busy)."""
    install(session, "test")
    pytest(
        session,
        "suites/unit",
        "suites/contract",
        "suites/e2e",
        "suites/adversarial",
        "--flow-report=reports/e2e-report.md",
        "--hypothesis-show-statistics",
    )


@nox.session(default=False, allow_parallel=True)
def example(session: nox.Session) -> None:
    """examples/wallet as a user would (a fresh venv, the harness alone: no gateway), green on the correct app, and
    red on each planted money bug (WALLET_BUG=double-credit|race|charge-on-failure) with the money checks expected."""
    beside_chaos(session)
    venv = Path(session.create_tmp()).resolve() / "wallet-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("uv", "venv", "-q", str(venv), external=True)
    python = str(venv / "bin" / "python")
    session.run("uv", "pip", "install", "-q", "--python", python, "./harness", "-e", "examples/wallet", external=True)
    # The harness brings nothing of the gateway: a project testing with it never imports creditgate by accident.
    session.run(python, "-c", NO_GATEWAY, external=True)
    with session.chdir("examples/wallet"):
        session.run(python, "-m", "pytest", "-p", "no:cacheprovider", *session.posargs, external=True)
        # One run, every test once per planted bug (not the live-server test: the slowest, no verdict of its own).
        session.run(
            python, "planted_bugs.py", "--deselect", "tests/test_wallet.py::test_the_app_on_a_real_port", external=True
        )


@nox.session(default=False, allow_parallel=True)
def docs(session: nox.Session) -> None:
    """The docs site: mkdocs build --strict into build/site (a broken link, page or docstring fails it)."""
    beside_chaos(session)
    session.install(*nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(default=False)
def smoke(session: nox.Session) -> None:
    """Read-only checks of a deployment: nox -s smoke -- --base-url https://… (or BASE_URL, SMOKE_API_KEY)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "smoke"))
    session.run("pytest", "suites/smoke", *session.posargs)


@nox.session(default=False)
def load(session: nox.Session) -> None:
    """locust scenarios against N gateway workers, then the ledger auditor: nox -s load -- --users 100 --time 60s.

    Each run writes into its own reports/load/<run-id>/; no locust, no paid request or no final stats fails it.
    Also: --processes N (locust distributed), --shape steady|ramp|spike|soak, --target URL --admin-key KEY
    (a deployed gateway, provisioned and audited through the admin API); see docs/load-and-chaos.md. The runner is
    the harness's (python -m creditgate_harness.load, any app through its adapter); creditgate's adapter is
    suites/load/adapter.py.
    """
    install(session, "test", "load")
    session.run("python", "-m", "suites.load.run", *session.posargs)


@nox.session(default=False)
def chaos(session: nox.Session) -> None:
    """Faults mid-load on a private loopback stack, each judged by the money oracle and the auditor.

    nox -s chaos (one run per fault: worker kill -9, all workers killed, Postgres and Redis restarted, an upstream
    fault storm); nox -s chaos -- --short (CI: every fault in one bounded run); --scenarios a,b to pick some.
    """
    install(session, "test", "load")
    session.run("python", "-m", "suites.chaos.run", *session.posargs)


@nox.session(name="chaos-short", default=False, allow_parallel=True)
def chaos_short(session: nox.Session) -> None:
    """CI's chaos run: nox -s chaos -- --short (every fault in one bounded run)."""
    install(session, "test", "load")
    session.run("python", "-m", "suites.chaos.run", "--short", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks (print figures; no pass/fail): gateway overhead, each hot-path lever's share (bench/levers.toml),
    where a request's time goes, hot-row deductions.

    bench.overhead also runs the LiteLLM proxy for comparison, from its own venv (build/litellm-venv, made on first
    use; it is no project dependency), and prints one line and goes on if it cannot.
    """
    install(session, "test", "bench")
    session.run("python", "-m", "bench.overhead", *session.posargs)
    session.run("python", "-m", "bench.ab", "--levers", "bench/levers.toml")  # CPU µs per request, lever by lever
    session.run("python", "-m", "bench.profile", *session.posargs)
    session.run("python", "-m", "bench.hot_row", *session.posargs)
    session.run("python", "-m", "bench.metrics")


@nox.session(default=False)
def mutants(session: nox.Session) -> None:
    """mutmut over the money path, shard by shard; prints the score and the survivors, fails under the gate.

    nox -s mutants (every shard); nox -s mutants -- --shard money --shard ledger; --list shows the shards
    ([tool.creditgate.mutants] in pyproject.toml; equivalent mutants in tools/mutants_equivalent.toml).
    """
    install(session, "test", "mutants")
    session.run("python", "tools/mutation_run.py", *session.posargs)


@nox.session(name="mutants-money", default=False, allow_parallel=True)
def mutants_money(session: nox.Session) -> None:
    """CI's mutation gate: nox -s mutants -- --shard money."""
    beside_chaos(session)
    install(session, "test", "mutants")
    session.run("python", "tools/mutation_run.py", "--shard", "money", *session.posargs)


@nox.session(default=False, allow_parallel=True)
def coverage(session: nox.Session) -> None:
    """Combine the sessions' coverage; gate the total (>= 85 %) and each money module (>= 95 %)."""
    beside_chaos(session)
    session.install("coverage[toml]>=7.10")
    session.run("coverage", "combine", "--keep", *[f for f in os.listdir(".") if f.startswith(".coverage.")])
    session.run("coverage", "xml", "-o", "reports/coverage.xml")
    session.run("coverage", "html", "-d", "reports/htmlcov")
    session.run("coverage", "json", "-o", "reports/coverage.json")
    session.run("coverage", "report", f"--fail-under={COVERAGE_MIN}")
    session.run("python", "tools/coverage_gates.py", "reports/coverage.json")


@nox.session(default=False, venv_backend="none")
def ci(session: nox.Session) -> None:
    """Everything CI gates on: all suites under coverage (tests, its output as it runs), then the checks: lint,
    types, the coverage gates, the example project, the docs site, the short chaos run (every fault, judged by the
    money oracle) and the mutation gate on money."""
    for stale in (f for f in os.listdir(".") if f.startswith(".coverage")):
        os.remove(stale)
    session.notify("tests")  # the adversarial suite included
    session.notify("checks")


@nox.session(default=False, venv_backend="none")
def checks(session: nox.Session) -> None:
    """CI's sessions after the tests, two at a time (nox --parallel 2), each one's output printed whole as it ends.

    The chaos run's load keeps about one core busy for its ~75 s, and the other checks each need about one core:
    side by side they take ~85 s against ~145 s one after the other. Any session failing fails this one.
    """
    session.run(sys.executable, "-m", "nox", "--parallel", "2", "-s", *CHECKS, external=True)
