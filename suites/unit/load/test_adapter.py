"""The load runner's adapter plumbing (creditgate_harness/load/adapter.py, runner.py; creditgate's and the wallet
example's adapters): no locust is started here except in the last test, a one-second run against a bare fake."""

from __future__ import annotations

import argparse
import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from creditgate_harness.fakes.providers import FakeProvider
from creditgate_harness.load import Accounts, BareUpstream, Call, Client, Scenario, load_adapter, runner, total_tokens
from creditgate_harness.oracle import AccountBooks, Books, marker
from creditgate_harness.servers import ThreadedServer
from suites.load.adapter import Creditgate, clients_from_keys

WALLET = Path(__file__).resolve().parents[3] / "examples" / "wallet"


def served(rid: str, account: str, *, prompt: int = 3, completion: int = 7) -> dict[str, Any]:
    """A ``GET /_fake/served`` row for one request."""
    return {
        "model": "gpt-4o-mini",
        "texts": [f"load {marker(rid, account)}"],
        "stream": False,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "usage_sent": True,
        "content": "hi",
    }


class Ledger:
    """An app whose balances live in a dict: each answered ask costs its total tokens (``overcharge``: a bug)."""

    scenarios = (Scenario("ask"),)
    webhook_path = None
    payment_account = "wallet_id"
    payment_credits = "tokens"
    audits = False

    def __init__(self, target: str = "", overcharge: str = "0") -> None:
        self.balances = {"1": Decimal(100), "2": Decimal(100)}
        self.overcharge = Decimal(overcharge)
        self.calls: list[str] = []

    def request(self, scenario: str, client: Client, prompt: str) -> Call:
        return Call(f"/wallets/{client.account}/ask", {"question": prompt})

    def checkout(self, client: Client) -> Call | None:
        return None

    def provision(self, run_id: str, *, users: int, members: int) -> Accounts:
        self.calls.append("provision")
        return Accounts(run_id, [Client("1"), Client("2", {"X-Key": "k"}, shared=True)], ["1", "2"])

    def snapshot(self, run: Accounts) -> dict[str, str]:
        self.calls.append("snapshot")
        return {a: str(b) for a, b in self.balances.items()}

    def settle(self, run: Accounts, before: Any) -> dict[str, str]:
        self.calls.append("settle")
        return {a: str(b) for a, b in self.balances.items()}

    def books(self, before: dict[str, str], after: dict[str, str]) -> list[Books]:
        def read(snapshot: dict[str, str]) -> dict[str, AccountBooks]:
            return {a: AccountBooks(a, Decimal(b)) for a, b in snapshot.items()}

        return Books.between(read(before), read(after))

    def price(self, row: Any) -> Decimal:
        return total_tokens(row)

    def audit(self, run: Accounts) -> tuple[None, str]:
        self.calls.append("audit")
        return None, "none"

    def teardown(self, run: Accounts) -> str:
        self.calls.append("teardown")
        return "done"


ARGS = argparse.Namespace(
    run_id="r1", users=2, members=1, duration=1.0, processes=1, shape="steady", webhook_secret="s", keep=False
)


def fake_locust(
    app: Ledger, rows: list[dict[str, Any]], *, cost: int = 10, upstream: list[dict[str, Any]] | None = None
) -> Any:
    """``run_locust`` without locust: each request of ``rows`` charged ``cost`` to ``app``'s balances (plus its
    overcharge) and, given an ``upstream`` list, served there; the clients' records written."""

    def run(out: Path, **kw: Any) -> runner.LocustRun:
        plan = json.loads(kw["plan"].read_text())
        assert [c["account"] for c in plan["clients"]] == ["1", "2"]
        assert plan["clients"][1] == {"account": "2", "headers": {"X-Key": "k"}, "shared": True}
        for row in rows:
            app.balances[row["account"]] -= Decimal(cost) + app.overcharge
            if upstream is not None:
                upstream.append(served(row["rid"], row["account"]))
        done = runner.LocustRun(out, "", 0)
        done.records.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return done

    return run


def test_a_run_provisions_loads_reads_the_books_and_judges_them_through_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Ledger()
    rows = [{"name": "ask", "rid": r, "account": a, "status": 200} for r, a in (("a", "1"), ("b", "2"))]
    records: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "run_locust", fake_locust(app, rows, upstream=records))
    monkeypatch.setattr(runner, "fakes_records", lambda up, stripe, since=(0, 0): (records[since[0] :], []))
    result = run(app, tmp_path, upstream="http://up")
    assert app.calls == ["provision", "snapshot", "settle", "audit", "teardown"]
    assert result.oracle is not None
    assert result.oracle.ok, str(result.oracle)
    assert (result.oracle.requests, result.oracle.served) == (2, 2)
    assert json.loads((tmp_path / "books.json").read_text())["after"] == {"1": "90", "2": "90"}
    without = run(Ledger(), tmp_path, upstream=None)
    assert without.oracle is None
    assert "no --fake-upstream" in without.oracle_skipped


def run(app: Ledger, out: Path, *, upstream: str | None) -> runner.RunResult:
    return runner.run_against(out, adapter=app, spec="x:Ledger", target="http://app", args=ARGS, upstream=upstream)


def test_books_that_do_not_match_what_was_served_fail_the_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Ledger(overcharge="1")  # charges 11 tokens for an answer of 10
    rows = [{"name": "ask", "rid": "a", "account": "1", "status": 200}]
    monkeypatch.setattr(runner, "run_locust", fake_locust(app, rows))
    monkeypatch.setattr(runner, "fakes_records", lambda *_, **__: ([served("a", "1")], []))
    result = run(app, tmp_path, upstream="http://up")
    assert result.oracle is not None
    assert [(v.account, v.check) for v in result.oracle.violations] == [("1", "balance")]
    gates = argparse.Namespace(max_error_rate=0, max_p95_ms=1)
    found = runner.judge(tmp_path, locust_exit=0, audit=None, args=gates, oracle=result.oracle, audited=False)
    assert "the money oracle found the books wrong" in found
    assert "the ledger could not be audited" not in found  # the app has no audit: none is no failure


def test_the_fakes_records_of_earlier_runs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake that outlives a run keeps its records; a new app's account ids start again at 1."""
    app = Ledger()
    rows = [{"name": "ask", "rid": "a", "account": "1", "status": 200}]
    monkeypatch.setattr(runner, "run_locust", fake_locust(app, rows))
    server = ThreadedServer(FakeProvider().app).start()
    try:
        ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"load {marker('old', '1')}"}]}
        httpx.post(f"{server.url}/v1/chat/completions", json=ask, timeout=10).raise_for_status()  # an earlier run's
        monkeypatch.setattr(runner, "run_locust", _serve_then(fake_locust(app, rows, cost=13), server.url))
        result = run(app, tmp_path, upstream=server.url)
    finally:
        server.stop()
    assert result.oracle is not None
    assert result.oracle.ok, str(result.oracle)
    assert result.oracle.served == 1


def _serve_then(run: Any, url: str) -> Any:
    """``run`` after the upstream served this run's request ``a``."""

    def both(out: Path, **kw: Any) -> runner.LocustRun:
        ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"load {marker('a', '1')}"}]}
        got = httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=10).json()["usage"]
        assert got["total_tokens"] == 13, got  # what the run charges it (cost=13)
        return run(out, **kw)

    return both


@pytest.mark.parametrize(
    ("spec", "options", "says"),
    [
        ("wallet_load", {}, "write it as module:Class"),
        ("no_such_module_here:X", {}, "cannot import 'no_such_module_here'"),
        ("creditgate_harness.load.adapter:Nope", {}, "has no 'Nope'"),
        ("creditgate_harness.load.adapter:BareUpstream", {"colour": "red"}, "unexpected keyword argument 'colour'"),
        ("creditgate_harness.load.adapter:Client", {"account": "1"}, "not a LoadAdapter (missing: scenarios"),
    ],
)
def test_a_wrong_adapter_is_named_with_the_fix(spec: str, options: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match="--adapter") as found:
        load_adapter(spec, options)
    assert says in str(found.value)


def test_adapters_are_load_adapters_and_build_their_requests() -> None:
    bare = load_adapter("creditgate_harness.load.adapter:BareUpstream", {"target": "http://x", "max_tokens": "7"})
    assert isinstance(bare, BareUpstream)
    call = bare.request("chat stream", Client("bare"), marker("r", "bare"))
    assert (call.path, call.stream, call.json["max_tokens"], call.json["stream_options"]) == (
        "/v1/chat/completions",
        True,
        7,
        {"include_usage": True},
    )
    gateway = load_adapter("suites.load.adapter:Creditgate", {"target": "http://gw", "admin_key": "k"})
    assert isinstance(gateway, Creditgate)
    call = gateway.request("chat stream", Client("3"), marker("r", 3))
    assert "stream_options" not in call.json  # the gateway asks its upstream for usage itself
    assert "[cg-load rid=r acct=3]" in call.json["messages"][0]["content"]
    assert "admin" not in vars(gateway)  # building it made no client: locust's processes build one each


def test_creditgate_keys_become_clients_and_a_plan_round_trips() -> None:
    keys = {"users": [{"key": "k1", "account": 5}], "org_members": [{"key": "k2", "account": 9}]}
    clients = clients_from_keys(keys)
    assert clients == [Client("5", {"Authorization": "Bearer k1"}), Client("9", {"Authorization": "Bearer k2"}, True)]
    plan = Accounts("r", clients, ["5", "9"]).plan()
    assert [Client.from_json(row) for row in json.loads(json.dumps(plan))["clients"]] == clients


def test_the_wallet_adapter_reads_its_books_from_the_api_or_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(WALLET))
    wallet = load_adapter("wallet_load:WalletAdapter", {"target": "http://w/"})
    call = wallet.request("ask", Client("4"), marker("r", 4))
    assert (call.path, call.json) == ("/wallets/4/ask", {"question": "load [cg-load rid=r acct=4]"})
    assert wallet.checkout(Client("4")) == Call("/wallets/4/top-up", {"cents": 50})
    assert not wallet.audits
    assert wallet.price(served("r", "4", prompt=3, completion=9)) == 12
    api = wallet.books({"4": {"balance": "100", "entries": None}}, {"4": {"balance": "88", "entries": None}})
    assert [(b.initial, b.final, b.charges) for b in api] == [(100, 88, None)]
    in_db = load_adapter("wallet_load:WalletAdapter", {"target": "http://w", "database_url": "sqlite+aiosqlite://"})
    assert in_db.audits
    opened = [["1", "100"]]
    db = in_db.books(
        {"4": {"balance": "100", "entries": opened}}, {"4": {"balance": "88", "entries": [*opened, ["2", "-12"]]}}
    )
    assert [(b.initial, b.final, b.charges, b.purchases) for b in db] == [(100, 88, 12, 0)]


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is the load extra's")
def test_locust_runs_an_adapter_and_records_each_request_with_its_marker(tmp_path: Path) -> None:
    upstream = ThreadedServer(FakeProvider().app).start()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Accounts("r", [Client("7"), Client("8", shared=True)], ["7", "8"]).plan()))
    try:
        done = runner.run_locust(
            tmp_path,
            adapter="creditgate_harness.load.adapter:BareUpstream",
            plan=plan,
            host=upstream.url,
            users=2,
            duration=1,
        )
        served_rows = httpx.get(f"{upstream.url}/_fake/served", timeout=10).json()
    finally:
        upstream.stop()
    assert done.exit_code == 0, (tmp_path / "locust.log").read_text()[-2000:]
    rows = done.rows()
    assert rows
    assert {r["account"] for r in rows} <= {"7", "8"}
    assert all(r["status"] == 200 for r in rows)
    assert {r["rid"] for r in rows} == {s["texts"][0].split("rid=")[1].split()[0] for s in served_rows}
    summary = done.summary()
    assert summary.paid_names == ("chat", "chat stream", "org chat")
    assert summary.paid == len(rows)
