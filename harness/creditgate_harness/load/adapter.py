"""What the load runner needs to know about an app: the ``LoadAdapter`` protocol, and the fake upstream's own.

The runner is generic over the app through this one small protocol (Jepsen's ``client``: set up, invoke, tear
down). An adapter:

- **provisions** a run: opens ``users`` accounts with credits (and ``members`` clients sharing one more account,
  where the app has shared accounts), and says how a load client calls the app as each (``Client``: the account
  id the app books charges to, and the headers that authenticate as it);
- **builds the requests** a load user sends (``request(scenario, client, prompt) -> Call``: a path and a JSON
  body that carries ``prompt`` — which holds the oracle's ``marker(rid, account)`` — to the upstream), and
  optionally a top-up (``checkout(client)``) and the path Stripe's webhooks go to;
- **reads the books** before and after the run (``snapshot``, ``settle``, ``books``: the oracle's ``Books``);
- **prices** what the upstream served (``price(served) -> Decimal``, the credits the app must charge for it);
- optionally **audits** its own ledger, and **tears the run down**.

``request``, ``checkout`` and the class attributes are used inside locust's processes, so an adapter is built there
too (``load_adapter(spec, options)``): its constructor must be cheap and must not call the app.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from creditgate_harness.oracle import Books, Served


@dataclass(frozen=True)
class Client:
    """How one load user calls the app: the account it spends (as the oracle's marker and the books name it) and
    the headers that authenticate as it. ``shared``: one of several clients of one account (an org's members)."""

    account: str
    headers: Mapping[str, str] = field(default_factory=dict)
    shared: bool = False

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Client:
        """From a plan file's row (``Accounts.plan()``)."""
        return cls(str(row["account"]), dict(row.get("headers") or {}), bool(row.get("shared")))


@dataclass(frozen=True)
class Call:
    """One HTTP request: ``method path`` with a JSON body. ``stream``: the answer is a server-sent event stream,
    whole only with its ``data: [DONE]`` (a cut one may or may not have been charged)."""

    path: str
    json: Any
    method: str = "POST"
    stream: bool = False


@dataclass(frozen=True)
class Scenario:
    """A paid request a load user sends: its name in locust's statistics, its weight among the scenarios of the
    same clients, and whether the clients that share an account send it (else the others do)."""

    name: str
    weight: int = 1
    shared: bool = False


@dataclass
class Accounts:
    """A provisioned run: the load clients, every account the run spends (the books' and the oracle's scope), and
    whatever the adapter keeps to tear the run down (``state``)."""

    run_id: str
    clients: list[Client]
    accounts: list[str]
    state: Any = None

    def plan(self) -> dict[str, Any]:
        """What the locustfile reads (``LOAD_PLAN_FILE``): the clients."""
        return {"run_id": self.run_id, "clients": [asdict(c) | {"headers": dict(c.headers)} for c in self.clients]}


@runtime_checkable
class Verdict(Protocol):
    """An auditor's answer: ``ok``, and ``str()`` says what it found."""

    @property
    def ok(self) -> bool: ...


@runtime_checkable
class LoadAdapter(Protocol):
    """An app as the load runner sees it (see the module docstring). Class attributes:

    - ``scenarios``: the paid requests (at least one);
    - ``webhook_path``: where Stripe's events go (``None``: no Stripe);
    - ``payment_account``, ``payment_credits``: the Checkout Session metadata keys naming the account and the
      credits bought (``Payment.from_json``'s);
    - ``audits``: the app has an audit of its own (``audit``), so a run it cannot audit fails.
    """

    scenarios: Sequence[Scenario]
    webhook_path: str | None
    audits: bool
    payment_account: str
    payment_credits: str

    def request(self, scenario: str, client: Client, prompt: str) -> Call:
        """The request of ``scenario`` as ``client``, its prompt ``prompt`` (it carries the oracle's marker)."""
        ...

    def checkout(self, client: Client) -> Call | None:
        """A top-up as ``client`` whose JSON answer has the Checkout Session's ``id`` (``None``: no top-ups)."""
        ...

    def provision(self, run_id: str, *, users: int, members: int) -> Accounts:
        """Open the run's accounts with credits (idempotent per ``run_id`` where the app allows it)."""
        ...

    def snapshot(self, run: Accounts) -> Any:
        """The books of the run's accounts before the load (JSON-serialisable, for the report's books.json)."""
        ...

    def settle(self, run: Accounts, before: Any) -> Any:
        """The books after the load, once they are final (e.g. no hold left open); same shape as ``snapshot``."""
        ...

    def books(self, before: Any, after: Any) -> list[Books]:
        """The oracle's ``Books`` per account from the two snapshots (``Books.between`` for ``AccountBooks``)."""
        ...

    def price(self, served: Any) -> Decimal:
        """The credits the app must charge for one completion the upstream served (a ``/_fake/served`` row)."""
        ...

    def audit(self, run: Accounts) -> tuple[Verdict | None, str]:
        """The app's own ledger audit and where it came from; ``(None, why)`` when the app has none."""
        ...

    def teardown(self, run: Accounts) -> str:
        """Undo what can be undone (revoke keys, close accounts); one line saying what was done."""
        ...


def load_adapter(spec: str, options: Mapping[str, str] | None = None) -> LoadAdapter:
    """``module:Class`` (or ``module:factory``) called with ``options`` as keyword arguments (the runner passes
    ``target``, the app's base URL, and every ``--option name=value``)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--adapter {spec!r}: write it as module:Class, e.g. wallet_load:WalletAdapter")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--adapter {spec!r}: cannot import {module_name!r} ({exc}); run from the directory that holds it "
            f"or put it on PYTHONPATH"
        ) from exc
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ValueError(f"--adapter {spec!r}: {module_name} has no {attribute!r}")
    try:
        adapter = factory(**dict(options or {}))
    except TypeError as exc:
        raise ValueError(f"--adapter {spec!r} with --option {dict(options or {})}: {exc}") from exc
    if not isinstance(adapter, LoadAdapter):
        missing = [n for n in _MEMBERS if not hasattr(adapter, n)]
        raise ValueError(f"--adapter {spec!r}: not a LoadAdapter (missing: {', '.join(missing)})")
    return adapter


_MEMBERS = (
    "scenarios",
    "webhook_path",
    "payment_account",
    "payment_credits",
    "audits",
    "request",
    "checkout",
    "provision",
    "snapshot",
    "settle",
    "books",
    "price",
    "audit",
    "teardown",
)


class BareUpstream:
    """The fake upstream itself as the app (no credits, no books): what the load generator can do on its own.

    The runner's generator ceiling sends the chat scenarios of OpenAI's API straight to a bare fake provider.
    """

    scenarios: Sequence[Scenario] = (
        Scenario("chat", weight=4),
        Scenario("chat stream", weight=1),
        Scenario("org chat", shared=True),
    )
    webhook_path: str | None = None
    payment_account = "account_id"
    payment_credits = "credits"
    audits = False

    def __init__(self, target: str = "", model: str = "gpt-4o", max_tokens: str | int = 100) -> None:
        self.model, self.max_tokens = model, int(max_tokens)

    def request(self, scenario: str, client: Client, prompt: str) -> Call:
        return chat_completion(scenario, prompt, model=self.model, max_tokens=self.max_tokens, usage_in_stream=True)

    def checkout(self, client: Client) -> Call | None:
        return None

    def provision(self, run_id: str, *, users: int, members: int) -> Accounts:
        clients = [Client("bare")] + ([Client("bare", shared=True)] if members else [])
        return Accounts(run_id, clients, [])

    def snapshot(self, run: Accounts) -> Any:
        return {}

    def settle(self, run: Accounts, before: Any) -> Any:
        return {}

    def books(self, before: Any, after: Any) -> list[Books]:
        return []

    def price(self, served: Any) -> Decimal:
        return Decimal(0)

    def audit(self, run: Accounts) -> tuple[Verdict | None, str]:
        return None, "a bare upstream keeps no books"

    def teardown(self, run: Accounts) -> str:
        return "nothing to tear down"


def chat_completion(scenario: str, prompt: str, *, model: str, max_tokens: int, usage_in_stream: bool) -> Call:
    """An OpenAI ``/v1/chat/completions`` call; a stream when the scenario's name says so."""
    stream = "stream" in scenario
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"load {prompt}"}],
    }
    if stream:
        body["stream"] = True
        if usage_in_stream:
            body["stream_options"] = {"include_usage": True}
    return Call("/v1/chat/completions", body, stream=stream)


def total_tokens(served: Any) -> Decimal:
    """A price: the upstream's prompt + completion tokens, one credit each (an app that bills tokens)."""
    row = Served.of(served)
    return Decimal(row.prompt_tokens + row.completion_tokens)
