"""Provision a load run through the admin API only, audit it through the API, deactivate it afterwards.

Everything is named after the run id (``load-<run>-u3@load.invalid``, org ``load <run>``) and every grant has an
idempotency key derived from it, so provisioning the same run twice creates nothing new and grants nothing twice
(keys are issued afresh: only their hashes are stored). Keys expire on their own (``key_ttl``) even if the
deactivation step never runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx


class ApiError(Exception):
    """An admin call failed: the method, path, status and body."""


@dataclass
class Provisioned:
    run_id: str
    users: list[dict[str, Any]] = field(default_factory=list)  # {"email", "key", "account"}
    org_members: list[dict[str, Any]] = field(default_factory=list)
    org_id: int | None = None
    org_account: int | None = None

    @property
    def emails(self) -> list[str]:
        return [u["email"] for u in self.users + self.org_members] + [owner_email(self.run_id)]

    @property
    def accounts(self) -> list[int]:
        ids = {int(u["account"]) for u in self.users} | ({self.org_account} if self.org_account else set())
        return sorted(ids)

    def keys_file(self) -> dict[str, list[dict[str, Any]]]:
        """What the locustfile reads (LOAD_KEYS_FILE)."""
        strip = lambda rows: [{"key": r["key"], "account": r["account"]} for r in rows]  # noqa: E731
        return {"users": strip(self.users), "org_members": strip(self.org_members)}


def owner_email(run_id: str) -> str:
    return f"load-{run_id}-owner@load.invalid"


class Admin:
    """The admin API of one gateway, with an admin key."""

    def __init__(self, base_url: str, admin_key: str, *, timeout: float = 30) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        for attempt in range(3):  # a transient refusal (a restarting gateway) is retried
            try:
                response = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                time.sleep(1)
                continue
            if response.status_code in ok:
                return response.json() if response.content else None
            if response.status_code < 500 or attempt == 2:
                raise ApiError(f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}")
            time.sleep(1)
        raise AssertionError("unreachable")

    def audit(self, accounts: list[int] | None = None, *, since_entry: int = 0, grace: float = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"since_entry": since_entry, "grace_seconds": grace}
        if accounts is not None:
            params["account_id"] = accounts
        result: dict[str, Any] = self.call("GET", "/admin/ledger/audit", params=params)
        return result

    def increment(self) -> Decimal:
        return Decimal(self.call("GET", "/admin/settings/credit-increment")["increment"])


def provision(
    admin: Admin,
    run_id: str,
    *,
    users: int,
    members: int,
    user_credits: Decimal = Decimal(50),
    org_credits: Decimal = Decimal(200),
    allocation: Decimal = Decimal(20),
    plan: str | None = "enterprise",
    key_ttl: int = 6 * 3600,
    parallel: int = 8,
) -> Provisioned:
    """Users with opening credits and keys, an org (its owner, credits and members with keys); idempotent."""
    done = Provisioned(run_id)

    def person(email: str, *, credits: Decimal | None) -> dict[str, Any]:
        user = admin.call("PUT", "/admin/users", json={"email": email})
        if credits:
            grant = {"email": email, "amount": str(credits), "idempotency_key": f"load:{run_id}:{email}:opening"}
            admin.call("POST", "/admin/credits", json={**grant, "description": f"load run {run_id}"})
        if plan is not None and credits is not None:
            admin.call("PUT", "/admin/subscriptions", json={"email": email, "plan": plan})
        return dict(user)

    def key(email: str) -> str:
        return str(admin.call("POST", "/admin/keys", json={"email": email, "ttl_seconds": key_ttl})["key"])

    def user(i: int) -> dict[str, Any]:
        email = f"load-{run_id}-u{i}@load.invalid"
        made = person(email, credits=user_credits)
        return {"email": email, "key": key(email), "account": made["account_id"]}

    owner = owner_email(run_id)
    person(owner, credits=None)
    org = admin.call("POST", "/admin/orgs", json={"name": f"load {run_id}", "owner_email": owner})
    done.org_id, done.org_account = int(org["org_id"]), int(org["account_id"])
    grant = {"org_id": done.org_id, "amount": str(org_credits), "idempotency_key": f"load:{run_id}:org:opening"}
    admin.call("POST", "/admin/credits", json=grant)
    if plan is not None:
        admin.call("PUT", "/admin/subscriptions", json={"org_id": done.org_id, "plan": plan})

    def member(j: int) -> dict[str, Any]:
        email = f"load-{run_id}-m{j}@load.invalid"
        made = person(email, credits=None)
        member_key = key(email)
        if made["org_id"] is None:  # joining is by consent: invited (admin key), accepted with the member's own key
            seat = {"email": email, "allocation": str(allocation)}
            invitation = admin.call("POST", f"/orgs/{done.org_id}/invitations", json=seat)
            accept = f"/user/invitations/{invitation['id']}/accept"
            admin.call("POST", accept, headers={"Authorization": f"Bearer {member_key}"}, ok=(200, 409))
        else:  # seated by an earlier run of the same id: set the allocation again
            admin.call("PUT", f"/orgs/{done.org_id}/members/{made['user_id']}", json={"allocation": str(allocation)})
        return {"email": email, "key": member_key, "account": done.org_account}

    with ThreadPoolExecutor(parallel) as pool:
        done.users = list(pool.map(user, range(users)))
        done.org_members = list(pool.map(member, range(members)))
    return done


def deactivate(admin: Admin, provisioned: Provisioned) -> dict[str, Any]:
    """Revoke every key of the run's users (their ledgers stay for the audit)."""
    result: dict[str, Any] = admin.call("POST", "/admin/users/deactivate", json={"emails": provisioned.emails})
    return result


def wait_for_holds(
    admin: Admin,
    accounts: list[int],
    *,
    since_entry: int,
    sweep_grace: float,
    max_wait: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The run's accounts once no hold is open, or once every open hold is past its expiry + ``sweep_grace``
    (the sweeper had its chance), or after ``max_wait`` seconds; the last audit answer."""
    deadline = time.monotonic() + max_wait
    announced = False
    while True:
        after = admin.audit(accounts, since_entry=since_entry)
        open_holds = sum(b["open_holds"] for b in after["balances"])
        if open_holds == 0 or time.monotonic() > deadline:
            return after
        expiries = [b["last_open_expiry"] for b in after["balances"] if b["last_open_expiry"]]
        last = max(httpx_time(e) for e in expiries) if expiries else 0.0
        if time.time() > last + sweep_grace:
            return after
        if not announced:
            log(f"waiting for {open_holds} open holds: the last expires in {last - time.time():.0f} s (+ sweep)")
            announced = True
        time.sleep(1)


def httpx_time(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
