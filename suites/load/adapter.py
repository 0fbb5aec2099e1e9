"""creditgate as the load runner sees it: the harness's ``LoadAdapter`` over the gateway's admin API.

Provisioning is suites/load/provision.py (users with credits and keys, an org whose members share its balance);
the books are the read-only audit endpoint's (``books_from_audit``), read once no hold is open; the price is the
gateway's charging rules (``Pricing`` from its catalog and settings); the audit is the harness auditor on the
database when ``database_url`` is given, else the audit endpoint; teardown revokes the run's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from functools import cached_property
from typing import Any

import httpx

from creditgate.testing.auditor import AuditReport, CannotAudit, Violation, audit_url
from creditgate_harness.load.adapter import Accounts, Call, Client, Scenario, Verdict, chat_completion
from creditgate_harness.load.runner import fakes_records, money_verdict
from creditgate_harness.oracle import Books, OracleReport, Pricing, books_from_audit
from suites.load.provision import Admin, Provisioned, deactivate, provision, wait_for_holds

SPEC = "suites.load.adapter:Creditgate"


def clients_from_keys(keys: dict[str, list[dict[str, Any]]]) -> list[Client]:
    """The load clients of a ``Provisioned.keys_file()``: each user on its own account, the org's members shared."""
    return [
        Client(str(row["account"]), {"Authorization": f"Bearer {row['key']}"} if row["key"] else {}, shared=shared)
        for group, shared in (("users", False), ("org_members", True))
        for row in keys[group]
    ]


def endpoint_audit(admin: Admin, accounts: list[int] | None, *, grace: float) -> AuditReport:
    """The audit endpoint's answer as an AuditReport (the same shape as the harness auditor's)."""
    found = admin.audit(accounts, grace=grace)
    return AuditReport(
        accounts=found["accounts"],
        entries=found["entries"],
        holds=found["holds"],
        violations=[Violation(v["check"], v["subject"], v["detail"]) for v in found["violations"]],
    )


class Creditgate:
    """The gateway at ``target``, with an admin key. Options (strings, as ``--option`` gives them): ``model`` and
    ``max_tokens`` of the chat scenarios; the deployment's ``margin`` and ``credit_value_usd`` (the oracle's
    prices); ``database_url`` (audit the database with the harness auditor) or ``audit_scope`` (``ledger``: the
    whole ledger through the endpoint, ``run``: the run's accounts); ``sweep_grace`` (its sweep interval + margin,
    s), ``hold_wait`` (wait at most this long for open holds, s), ``key_ttl`` (s)."""

    scenarios: Sequence[Scenario] = (
        Scenario("chat", weight=4),
        Scenario("chat stream", weight=1),
        Scenario("org chat", shared=True),
    )
    webhook_path: str | None = "/billing/webhook"
    payment_account = "account_id"
    payment_credits = "credits"
    audits = True

    def __init__(
        self,
        target: str,
        *,
        admin_key: str = "",
        model: str = "gpt-4o",
        max_tokens: str = "100",
        margin: str = "1.5",
        credit_value_usd: str = "0.01",
        database_url: str = "",
        audit_scope: str = "ledger",
        sweep_grace: str = "35",
        hold_wait: str = "90",
        key_ttl: str = str(6 * 3600),
    ) -> None:
        self.target, self.admin_key = target.rstrip("/"), admin_key
        self.model, self.max_tokens = model, int(max_tokens)
        self.margin, self.credit_value_usd = Decimal(margin), Decimal(credit_value_usd)
        self.database_url, self.audit_scope = database_url, audit_scope
        self.sweep_grace, self.hold_wait, self.key_ttl = float(sweep_grace), float(hold_wait), int(key_ttl)

    @cached_property
    def admin(self) -> Admin:
        """The admin API (made on first use: locust's processes build the adapter only to make requests)."""
        return Admin(self.target, self.admin_key)

    # -- in locust's processes ---------------------------------------------------------------------------------
    def request(self, scenario: str, client: Client, prompt: str) -> Call:
        return chat_completion(scenario, prompt, model=self.model, max_tokens=self.max_tokens, usage_in_stream=False)

    def checkout(self, client: Client) -> Call | None:
        return Call("/billing/checkout", {"amount_usd": "5.00"})

    # -- in the runner ------------------------------------------------------------------------------------------
    def provision(self, run_id: str, *, users: int, members: int) -> Accounts:
        made = provision(self.admin, run_id, users=users, members=members, key_ttl=self.key_ttl)
        print(f"  {len(made.users)} users, org {made.org_id} with {len(made.org_members)} members")
        return Accounts(run_id, clients_from_keys(made.keys_file()), [str(a) for a in made.accounts], state=made)

    def snapshot(self, run: Accounts) -> dict[str, Any]:
        return self.admin.audit(self._accounts(run))

    def settle(self, run: Accounts, before: dict[str, Any]) -> dict[str, Any]:
        return wait_for_holds(
            self.admin,
            self._accounts(run),
            since_entry=before["last_entry_id"],
            sweep_grace=self.sweep_grace,
            max_wait=self.hold_wait,
        )

    def books(self, before: dict[str, Any], after: dict[str, Any]) -> list[Books]:
        return books_from_audit(before, after)

    @cached_property
    def pricing(self) -> Pricing:
        """The deployment's prices: its catalog, the given margin and credit value, its credit increment."""
        catalog = httpx.get(f"{self.target}/catalog/models", timeout=30).json()
        return Pricing.from_catalog(
            catalog, margin=self.margin, credit_value_usd=self.credit_value_usd, increment=self.admin.increment()
        )

    def price(self, served: Any) -> Decimal:
        return self.pricing(served)

    def audit(self, run: Accounts) -> tuple[Verdict | None, str]:
        try:
            if self.database_url:
                return audit_url(self.database_url), "harness auditor on the database"
            scope = None if self.audit_scope == "ledger" else self._accounts(run)
            return endpoint_audit(
                self.admin, scope, grace=self.sweep_grace
            ), f"admin audit endpoint ({self.audit_scope})"
        except CannotAudit as exc:
            return None, f"cannot audit: {exc}"

    def teardown(self, run: Accounts) -> str:
        done = deactivate(self.admin, run.state)
        self.admin.close()
        return f"deactivated the run's {done['users']} users ({done['keys_revoked']} keys revoked)"

    @staticmethod
    def _accounts(run: Accounts) -> list[int]:
        return [int(a) for a in run.accounts]


def money_oracle(
    *,
    target: str,
    admin: Admin,
    upstream: str,
    stripe: str | None,
    rows: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    margin: Decimal,
    credit_value_usd: Decimal,
) -> OracleReport:
    """The oracle's verdict on a gateway's run: its inputs each from its own source (the fakes' records, the
    clients', the books via the API)."""
    gateway = Creditgate(target, margin=str(margin), credit_value_usd=str(credit_value_usd))
    gateway.admin = admin  # the caller's (cached_property: an instance attribute replaces it)
    served, payments = fakes_records(upstream, stripe)
    return money_verdict(gateway, rows=rows, before=before, after=after, served=served, payments=payments)


__all__ = ["SPEC", "Creditgate", "Provisioned", "clients_from_keys", "endpoint_audit", "money_oracle"]
