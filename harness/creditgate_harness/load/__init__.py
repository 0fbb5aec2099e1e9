"""Load for any credits app: locust scenarios, provisioning and books through a small adapter, the money oracle.

An app is described to the runner by a ``LoadAdapter`` (adapter.py): open accounts with credits, build the paid
request carrying the oracle's marker, read the books, price what the upstream served. ``python -m
creditgate_harness.load --adapter module:Class --target URL --fake-upstream URL`` runs locust against it and judges
the run (runner.py); locust comes with the ``load`` extra (``pip install 'creditgate-harness[load]'``) and is
imported only in locust's own processes.
"""

from __future__ import annotations

from creditgate_harness.load.adapter import (
    Accounts,
    BareUpstream,
    Call,
    Client,
    LoadAdapter,
    Scenario,
    Verdict,
    chat_completion,
    load_adapter,
    total_tokens,
)
from creditgate_harness.load.runner import RunResult, judge, money_verdict, run_against

__all__ = [
    "Accounts",
    "BareUpstream",
    "Call",
    "Client",
    "LoadAdapter",
    "RunResult",
    "Scenario",
    "Verdict",
    "chat_completion",
    "judge",
    "load_adapter",
    "money_verdict",
    "run_against",
    "total_tokens",
]
