"""The example's tests must catch each planted money bug, with the harness's own checks: `python planted_bugs.py`.

For each ``WALLET_BUG`` (app/main.py) it runs the suite (pytest's arguments after the script's name are passed on),
reads its JUnit XML and fails unless the run failed, the tests named below are among the failures, each with the
money oracle's verdict naming the check expected, and every failure is a money verdict (the oracle's or the
ledger check's): a run that passes, or fails for another reason (an import error, a typo), fails this script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

TESTS = "tests/test_wallet.py::"
# bug → {test id: a violation the money oracle must name in its failure}
EXPECTED = {
    "double-credit": {"test_a_redelivered_top_up_is_credited_once": "[purchases]"},
    "race": {
        "test_concurrent_asks_never_spend_a_token_twice[sqlite]": "[negative-balance]",
        "test_concurrent_asks_never_spend_a_token_twice[postgres]": "[negative-balance]",
    },
    "charge-on-failure": {"test_answers_are_charged_what_was_served_and_outages_nothing": "[charges]"},
}
MONEY = ("money oracle:", "ledger check")


def failures(junit: Path) -> dict[str, str]:
    """test id → its failure and error messages and text (a test may fail in its call and error in teardown)."""
    found: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        for problem in [*case.iter("failure"), *case.iter("error")]:
            name = case.get("name", "?")
            found[name] = found.get(name, "") + (problem.get("message") or "") + "\n" + (problem.text or "")
    return found


def start(bug: str, junit: Path, args: list[str]) -> subprocess.Popen[str]:
    """The suite on the app with ``bug`` planted, in the background (the three runs overlap)."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", *args]
    env = {**os.environ, "WALLET_BUG": bug}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check(bug: str, expected: dict[str, str], run: subprocess.Popen[str], junit: Path) -> list[str]:
    """What is wrong with one planted bug's run (nothing: it was caught as expected)."""
    output, _ = run.communicate()
    if run.returncode != 1 or not junit.exists():
        tail = "\n".join(output.splitlines()[-15:])
        return [f"WALLET_BUG={bug}: pytest exited {run.returncode} (1 expected: tests failed)\n{tail}"]
    failed = failures(junit)
    problems = []
    for test, violation in expected.items():
        if test not in failed:
            problems.append(f"WALLET_BUG={bug}: {TESTS}{test} passed; it must catch the bug")
        elif violation not in failed[test]:
            problems.append(f"WALLET_BUG={bug}: {TESTS}{test} failed without the oracle naming {violation}")
    for test, text in failed.items():
        if not any(kind in text for kind in MONEY):
            problems.append(f"WALLET_BUG={bug}: {TESTS}{test} failed, but not on a money check:\n{text[:600]}")
    print(f"WALLET_BUG={bug}: {len(failed)} failing test(s): {', '.join(sorted(failed))}")
    return problems


def main(args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        junits = {bug: Path(tmp) / f"{bug}.xml" for bug in EXPECTED}
        runs = {bug: start(bug, junits[bug], args) for bug in EXPECTED}
        problems = [p for bug, expected in EXPECTED.items() for p in check(bug, expected, runs[bug], junits[bug])]
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"every planted bug ({', '.join(EXPECTED)}) was caught by the money checks it should be")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
