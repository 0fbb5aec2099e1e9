"""The example's tests must catch each planted money bug, with the harness's own checks: `python planted_bugs.py`.

It runs the suite once with this module as a pytest plugin (``-p planted_bugs``), which runs every test once per
``WALLET_BUG`` (app/main.py), reads the JUnit XML and fails unless the tests named below failed on each bug, each
with the money oracle naming the violation expected, and every failure is a money verdict (the oracle's or the
ledger check's): a bug the suite lets through, or a failure for another reason (an import error, a typo), fails
this script. pytest's arguments after the script's name are passed on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# bug → {test id: a violation the money oracle must name in its failure}
EXPECTED = {
    "double-credit": {"test_a_redelivered_top_up_is_credited_once[double-credit]": "[purchases]"},
    "race": {
        "test_concurrent_asks_never_spend_a_token_twice[race-sqlite]": "[negative-balance]",
        "test_concurrent_asks_never_spend_a_token_twice[race-postgres]": "[negative-balance]",
    },
    "charge-on-failure": {
        "test_answers_are_charged_what_was_served_and_outages_nothing[charge-on-failure]": "[charges]"
    },
}
MONEY = ("money oracle:", "ledger check")


@pytest.fixture(autouse=True, params=list(EXPECTED))
def wallet_bug(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The plugin's side: every test runs on the app with each planted bug (set before the app is built)."""
    monkeypatch.setenv("WALLET_BUG", request.param)
    return str(request.param)


def failures(junit: Path) -> tuple[dict[str, str], set[str]]:
    """test id → its failure and error messages and text (a test may fail in its call and error in teardown); and
    the tests skipped (the Postgres variant where no Postgres could be had)."""
    found: dict[str, str] = {}
    skipped: set[str] = set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        if case.find("skipped") is not None:
            skipped.add(name)
        for problem in [*case.iter("failure"), *case.iter("error")]:
            found[name] = found.get(name, "") + (problem.get("message") or "") + "\n" + (problem.text or "")
    return found, skipped


def ran_with(test: str, bug: str) -> bool:
    """Whether a test id ran with ``bug`` planted (the first of its parameters: the plugin's fixture)."""
    params = test.partition("[")[2].removesuffix("]")
    return params == bug or params.startswith(f"{bug}-")


def problems(failed: dict[str, str], skipped: set[str]) -> list[str]:
    """What is wrong with the run (nothing: every bug was caught as expected, on money checks only)."""
    found = []
    for bug, expected in EXPECTED.items():
        if all(test in skipped for test in expected):
            found.append(f"WALLET_BUG={bug}: every test that must catch it was skipped")
        for test, violation in expected.items():
            if test in skipped:
                print(f"WALLET_BUG={bug}: {test} skipped", file=sys.stderr)
            elif test not in failed:
                found.append(f"WALLET_BUG={bug}: {test} passed; it must catch the bug")
            elif violation not in failed[test]:
                found.append(f"WALLET_BUG={bug}: {test} failed without the oracle naming {violation}")
        caught = sorted(t for t in failed if ran_with(t, bug))
        print(f"WALLET_BUG={bug}: {len(caught)} failing test(s): {', '.join(caught)}")
    for test, text in failed.items():
        if not any(kind in text for kind in MONEY):
            found.append(f"{test} failed, but not on a money check:\n{text[:600]}")
    return found


def main(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-p", "planted_bugs", "-p", "no:cacheprovider", "-q"]
        run = subprocess.run([*command, f"--junitxml={junit}", *args], capture_output=True, text=True, env=os.environ)
        if run.returncode != 1 or not junit.exists():
            tail = "\n".join((run.stdout + run.stderr).splitlines()[-15:])
            print(f"pytest exited {run.returncode} (1 expected: tests failed)\n{tail}", file=sys.stderr)
            return 1
        found = problems(*failures(junit))
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"every planted bug ({', '.join(EXPECTED)}) was caught by the money checks it should be")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
