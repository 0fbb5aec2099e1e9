"""The tenant matrix's world and its schema reading (issue 26; used by test_tenant_matrix.py).

- ``Operation`` / ``operations(schema)``: every route of the gateway's OpenAPI schema, with the tenant ids it
  takes (path, query and body fields whose names say they point at a tenant's resource) and the other values a
  request needs (``request_body`` builds a minimal valid JSON body from the schema).
- ``build_world(path)``: a SQLite database holding two tenants (A, the attacker's side, and B, the victim),
  an unrelated user and a platform admin, set up through the API wherever the API can do it (only the platform
  admin, whose key no route issues, is made directly). Built once per session; each test gets a copy.
- ``snapshot(session, tenant)``: every row of every table that belongs to a tenant (its users, accounts, ledger
  entries, holds, org, memberships, keys, BYOK keys, payments, plans, invitations, ...), found by column names
  from the models' metadata, so a table added later is compared without editing this file.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from cryptography.fernet import Fernet
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.auth import service as auth
from creditgate.db.models import Account, ApiKey, Base, Membership
from creditgate.main import create_app
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate.testing.gateway import migrate
from creditgate_harness.fakes.providers import FakeProvider

METHODS = ("get", "put", "post", "delete", "patch")
DOMAIN = "matrix.test"
CHAT = {"model": "test-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
PROVIDER = "fake"  # the test catalog's single provider (BYOK keys are stored per provider)

# -- tenant ids: which request fields point at a tenant's resource -----------------------------------------
# A field's *kind* says which of a tenant's resources fills it. Kinds needing an org exist only for callers in one.
FIELD_KINDS = {
    "org_id": "org",
    "organization_id": "org",
    "user_id": "member",
    "member_id": "member",
    "email": "email",
    "owner_email": "email",
    "invitee_email": "email",
    "emails": "emails",
    "account_id": "account",
    "invitation_id": "invitation",
    "invite_id": "invitation",
    "key_id": "key",
    "api_key_id": "key",
    "transaction_id": "entry",
    "entry_id": "entry",
    "payment_id": "payment",
}
# A path parameter named just ``id`` (or ``<something>_id`` we do not know) takes its kind from the segment before it.
SEGMENT_KINDS = {
    "orgs": "org",
    "organizations": "org",
    "members": "member",
    "users": "member",
    "invitations": "invitation",
    "invites": "invitation",
    "keys": "key",
    "api-keys": "key",
    "transactions": "entry",
    "payments": "payment",
}
ORG_KINDS = frozenset({"org", "member", "invitation"})
# Where an email names an addressee, not a resource: an invitation may be sent to any address by design (nothing
# changes for its addressee until they accept), so it is filled with a stranger's address, not a tenant's.
ADDRESSEE_PATHS = re.compile(r".*/invitations")
# Path parameters that name no tenant's resource: one fixed value for every caller.
CONSTANT_PARAMS = {"provider": PROVIDER, "model_id": "test-model"}

# Plausible values for the fields of a body that are not tenant ids (by field name); the rest come from the schema.
PLAUSIBLE: dict[str, Any] = {
    "name": "matrix org",
    "model": "test-model",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 16,
    "prompt": "a lighthouse at dusk",
    "allocation": "5",
    "amount": "1.00",
    "amount_usd": "10.00",
    "increment": "0.01",
    "plan": "professional",
    "api_key": "sk-matrix-attacker-0001",
    "provider": PROVIDER,
    "role": "member",
    "type": "bonus",
}


@dataclass(frozen=True)
class Field:
    """One tenant-id field of a request: where it goes (path, query, body), its name and kind."""

    where: str
    name: str
    kind: str
    required: bool
    array: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    op: dict[str, Any] = field(repr=False, compare=False)
    tenant_fields: tuple[Field, ...] = ()
    unknown_params: tuple[str, ...] = ()  # path parameters nobody taught us to fill

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def documented(self) -> frozenset[str]:
        return frozenset(self.op.get("responses", {}))

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(self.op.get("tags", ()))

    @property
    def authenticated(self) -> bool:
        return bool(self.op.get("security"))

    def variants(self) -> list[tuple[Field, ...]]:
        """The sets of tenant fields one request carries: every required one, plus each optional one alone (a body
        may take exactly one of ``email``/``org_id``; each is a way to point at a tenant)."""
        required = tuple(f for f in self.tenant_fields if f.required)
        optional = [f for f in self.tenant_fields if not f.required]
        return [(*required, f) for f in optional] if optional else [required]


def _deref(schema: Mapping[str, Any], node: Any) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        target: Any = schema
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def body_schema(schema: Mapping[str, Any], op: Mapping[str, Any]) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    resolved: dict[str, Any] = _deref(schema, content["application/json"].get("schema", {}))
    return resolved


def _kind(name: str, path: str) -> str | None:
    if name in FIELD_KINDS:
        return FIELD_KINDS[name]
    if name == "id" or name.endswith("_id"):
        segments = path.split("/")
        marker = "{" + name + "}"
        if marker in segments:
            at = segments.index(marker)
            if at > 0 and segments[at - 1] in SEGMENT_KINDS:
                return SEGMENT_KINDS[segments[at - 1]]
    return None


def _is_array(schema: Mapping[str, Any], node: Any) -> bool:
    node = _deref(schema, node)
    options = node.get("anyOf", [node]) if isinstance(node, Mapping) else []
    return any(_deref(schema, o).get("type") == "array" for o in options)


def operations(schema: Mapping[str, Any]) -> list[Operation]:
    found = []
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            fields: list[Field] = []
            unknown: list[str] = []
            for param in op.get("parameters", []):
                param = _deref(schema, param)
                where, name = param["in"], param["name"]
                if where not in ("path", "query"):
                    continue
                kind = _kind(name, path)
                if kind is not None:
                    array = _is_array(schema, param.get("schema", {}))
                    fields.append(Field(where, name, kind, where == "path" or bool(param.get("required")), array))
                elif where == "path" and name not in CONSTANT_PARAMS:
                    unknown.append(name)
            body = body_schema(schema, op)
            if body is not None:
                required = set(body.get("required", []))
                for name, prop in body.get("properties", {}).items():
                    if "email" in name and ADDRESSEE_PATHS.fullmatch(path):
                        continue
                    kind = _kind(name, path)
                    if kind is not None:
                        fields.append(Field("body", name, kind, name in required, _is_array(schema, prop)))
            found.append(Operation(method.upper(), path, op, tuple(fields), tuple(unknown)))
    return found


def _example(schema: Mapping[str, Any], node: Any, name: str) -> Any:
    """A plausible value for a required field nobody named in ``PLAUSIBLE``, from its schema."""
    node = _deref(schema, node)
    if "anyOf" in node or "oneOf" in node:
        options = [_deref(schema, o) for o in node.get("anyOf", node.get("oneOf", []))]
        node = next((o for o in options if o.get("type") != "null"), options[0])
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node["enum"][0]
    if "default" in node:
        return node["default"]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        return {
            key: PLAUSIBLE[key] if key in PLAUSIBLE else _example(schema, prop, key)
            for key, prop in node.get("properties", {}).items()
            if key in node.get("required", [])
        }
    if kind == "array":
        return [_example(schema, node.get("items", {}), name) for _ in range(max(1, node.get("minItems", 1)))]
    if kind == "integer":
        return int(node.get("minimum", 1))
    if kind == "number":
        return node.get("minimum", 1)
    if kind == "boolean":
        return False
    if node.get("format") == "email" or "email" in name:
        return f"stranger@elsewhere.{DOMAIN}"
    return "x" * max(8, int(node.get("minLength", 1)))


def request_body(schema: Mapping[str, Any], op: Operation, values: Mapping[str, Any]) -> Any:
    """A minimal valid body: every required property (``values`` first, then ``PLAUSIBLE``, then the schema), and
    the optional ones ``values`` names (the tenant ids of this request). ``None`` when the route takes no JSON."""
    body = body_schema(schema, op.op)
    if body is None:
        return None
    out: dict[str, Any] = {}
    required = set(body.get("required", []))
    for name, prop in body.get("properties", {}).items():
        if name in values:
            out[name] = values[name]
        elif name in required:
            out[name] = PLAUSIBLE[name] if name in PLAUSIBLE else _example(schema, prop, name)
        if name == "idempotency_key" and name in out:
            out[name] = f"matrix-{secrets.token_hex(6)}"
    return out


# -- the world -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    user_id: int
    email: str
    account_id: int
    key: str
    key_id: int
    entry_id: int | None = None  # the newest entry on their own account

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class Tenant:
    """One tenant's resources. ``owner`` admins ``org_id``; ``member`` is in it; ``spare`` is a user of theirs with
    credits and no seat yet (invited to the org when the API has invitations: ``invitation_id``)."""

    label: str
    owner: Person
    people: tuple[Person, ...]
    org_id: int | None = None
    org_name: str | None = None
    org_account_id: int | None = None
    member: Person | None = None
    spare: Person | None = None
    invitation_id: int | str | None = None
    byok_secret: str | None = None

    def value(self, kind: str, me: Person | None = None) -> Any:
        """This tenant's id of ``kind`` (``None``: it has no such resource). User-level ids are ``me``'s (the caller
        naming their own) or else the owner's; an email is ``me``'s or else the spare's (a user with no seat)."""
        person = me or self.owner
        addressee = me or self.spare or self.owner
        return {
            "org": self.org_id,
            "member": self.member.user_id if self.member else None,
            "email": addressee.email,
            "emails": [addressee.email],
            "account": person.account_id,
            "invitation": self.invitation_id,
            "key": person.key_id,
            "entry": person.entry_id,
            "payment": None,
        }[kind]

    @property
    def user_ids(self) -> set[int]:
        return {p.user_id for p in self.people}

    @property
    def account_ids(self) -> set[int]:
        ids = {p.account_id for p in self.people}
        return ids | ({self.org_account_id} if self.org_account_id else set())

    @property
    def emails(self) -> set[str]:
        return {p.email for p in self.people}

    def secrets(self) -> set[str]:
        """Strings only this tenant's own answers may contain."""
        found = {p.key for p in self.people} | {p.email for p in self.people}
        return found | {s for s in (self.org_name, self.byok_secret) if s}


@dataclass(frozen=True)
class World:
    a: Tenant  # the attacker's tenant: the org member and the org admin callers
    b: Tenant  # the victim
    loner: Tenant  # the unrelated user (no org)
    admin: Tenant  # the platform admin (no org)
    db_path: Path
    byok_key: str
    invitations: bool  # was membership set up by invite + accept


def world_settings(url: str, byok_key: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=url,
        sweep_interval_seconds=3600,
        upstream_timeout_seconds=5,
        byok_encryption_key=byok_key,
    )


class SetupFailed(AssertionError):
    pass


def _ok(response: httpx.Response, what: str) -> Any:
    if not response.is_success:
        raise SetupFailed(
            f"world set-up: {what}: {response.request.method} {response.request.url.path} → "
            f"{response.status_code} {response.text[:300]}"
        )
    return response.json() if response.content else None


def _find(schema: Mapping[str, Any], method: str, pattern: str) -> str | None:
    for path, item in schema["paths"].items():
        if method in item and re.fullmatch(pattern, path):
            return str(path)
    return None


def _fill(path: str, value: Any) -> str:
    return re.sub(r"\{[^}]+\}", str(value), path, count=1)


def _invitation_id(payload: Any) -> int | str:
    if isinstance(payload, Mapping):
        for key in ("id", "invitation_id"):
            if key in payload:
                return payload[key]  # type: ignore[no-any-return]
        for key in ("invitation", "data"):
            if isinstance(payload.get(key), Mapping):
                return _invitation_id(payload[key])
    raise SetupFailed(f"world set-up: cannot find the invitation id in {payload!r}")


async def build_world(path: Path) -> World:
    """The world, built in a fresh SQLite database at ``path`` through the gateway's API."""
    url = f"sqlite+aiosqlite:///{path}"
    migrate(url)
    byok_key = Fernet.generate_key().decode()
    upstream = httpx.ASGITransport(app=FakeProvider().app)
    app = create_app(world_settings(url, byok_key), catalog=catalog_for_tests(), upstream_transport=upstream)
    schema = app.openapi()
    invite_path = _find(schema, "post", r"/orgs/\{[^}]+\}/invitations")
    accept_path = _find(schema, "post", r"/user/invitations/\{[^}]+\}/accept")
    add_path = _find(schema, "post", r"/orgs/\{[^}]+\}/members")
    if invite_path and not accept_path:
        raise SetupFailed(f"the schema has {invite_path} but no POST /user/invitations/{{id}}/accept to accept with")
    token = secrets.token_hex(4)

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            async with app.state.runtime.sessionmaker() as session, session.begin():
                email = f"platform-admin@{DOMAIN}"
                user, account = await auth.create_user(session, email=email, is_admin=True)  # no route makes admins
                admin_key = await auth.issue_key(session, user_id=user.id)
            admin_headers = {"Authorization": f"Bearer {admin_key}"}

            async def grant(target: dict[str, Any], amount: str) -> None:
                body = {**target, "amount": amount, "idempotency_key": f"world-{secrets.token_hex(6)}"}
                _ok(await client.post("/admin/credits", json=body, headers=admin_headers), f"grant {target}")

            async def key_id(key: str) -> int:
                async with app.state.runtime.sessionmaker() as session:
                    found = await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == auth.hash_key(key)))
                assert found is not None
                return int(found)

            async def person(email: str, credits: str) -> Person:
                made = _ok(await client.put("/admin/users", json={"email": email}, headers=admin_headers), email)
                key = _ok(await client.post("/admin/keys", json={"email": email}, headers=admin_headers), email)
                await grant({"email": email}, credits)
                return Person(made["user_id"], email, made["account_id"], key["key"], await key_id(key["key"]))

            async def chat(who: Person) -> None:
                _ok(await client.post("/v1/chat/completions", json=CHAT, headers=who.headers), f"{who.email} chats")

            async def byok(who: Person, secret: str) -> None:
                body = {"provider": PROVIDER, "api_key": secret}
                _ok(await client.post("/user/provider-keys", json=body, headers=who.headers), f"{who.email} BYOK")

            async def last_entry(who: Person) -> int:
                page = _ok(await client.get("/user/transactions", params={"limit": 1}, headers=who.headers), "tx")
                return int(page["data"][0]["id"])

            async def invite(org_id: int, owner: Person, who: Person) -> int | str:
                assert invite_path is not None
                op = next(o for o in operations(schema) if o.method == "POST" and o.path == invite_path)
                body = request_body(schema, op, {"email": who.email, "allocation": "50", "role": "member"})
                payload = _ok(await client.post(_fill(invite_path, org_id), json=body, headers=owner.headers), "invite")
                return _invitation_id(payload)

            async def tenant(label: str) -> Tenant:
                domain = f"tenant-{label}.{DOMAIN}"
                owner = await person(f"owner@{domain}", "100")
                member = await person(f"member@{domain}", "20")
                spare = await person(f"spare@{domain}", "20")
                for who in (owner, member, spare):
                    await chat(who)  # a transaction (hold, usage, release) on each personal account
                owner, member, spare = [replace(p, entry_id=await last_entry(p)) for p in (owner, member, spare)]
                name = f"org-{label}-{token}"
                org = _ok(await client.post("/orgs", json={"name": name}, headers=owner.headers), "create org")
                await grant({"org_id": org["id"]}, "1000")
                invitation = None
                if invite_path and accept_path:
                    joining = await invite(org["id"], owner, member)
                    _ok(await client.post(_fill(accept_path, joining), headers=member.headers), "accept")
                    invitation = await invite(org["id"], owner, spare)  # left pending
                elif add_path:
                    body = {"email": member.email, "allocation": "50"}
                    _ok(await client.post(_fill(add_path, org["id"]), json=body, headers=owner.headers), "seat")
                else:  # neither way in the schema (mid-migration): seat them as the service would
                    async with app.state.runtime.sessionmaker() as session, session.begin():
                        session.add(
                            Membership(org_id=org["id"], user_id=member.user_id, role="member", allocation=5000)
                        )
                await chat(member)  # spends the org's credits
                secret = f"sk-byok-{label}-{token}-secret"
                await byok(owner, secret)
                async with app.state.runtime.sessionmaker() as session:
                    org_account = await session.scalar(select(Account.id).where(Account.org_id == org["id"]))
                return Tenant(
                    label,
                    owner,
                    (owner, member, spare),
                    org_id=org["id"],
                    org_name=name,
                    org_account_id=org_account,
                    member=member,
                    spare=spare,
                    invitation_id=invitation,
                    byok_secret=secret,
                )

            a = await tenant("a")
            b = await tenant("b")
            loner_person = await person(f"loner@{DOMAIN}", "50")
            await chat(loner_person)
            await byok(loner_person, f"sk-byok-loner-{token}-secret")
            loner_person = replace(loner_person, entry_id=await last_entry(loner_person))
            loner = Tenant("loner", loner_person, (loner_person,))
            admin_person = Person(user.id, email, account.id, admin_key, await key_id(admin_key))
            await grant({"email": email}, "10")
            admin_person = replace(admin_person, entry_id=await last_entry(admin_person))
            admin = Tenant("admin", admin_person, (admin_person,))
    with sqlite3.connect(path) as conn:  # one self-contained file: no WAL left beside it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    return World(a, b, loner, admin, path, byok_key, bool(invite_path))


# -- a tenant's books ------------------------------------------------------------------------------------------
Books = dict[str, list[tuple[Any, ...]]]


async def snapshot(session: AsyncSession, tenant: Tenant) -> Books:
    """Every row, in every table of the models, that belongs to ``tenant`` (by its users, accounts, org, emails)."""
    users, accounts, emails = tenant.user_ids, tenant.account_ids, tenant.emails
    subjects = {f"user:{u}" for u in users} | ({f"org:{tenant.org_id}"} if tenant.org_id else set())
    books: Books = {}
    for table in Base.metadata.sorted_tables:
        conditions: list[ColumnElement[bool]] = []
        for column in table.columns:
            name = column.name
            if name == "id" and table.name == "users":
                conditions.append(column.in_(users))
            elif name == "id" and table.name == "orgs" and tenant.org_id:
                conditions.append(column == tenant.org_id)
            elif name == "account_id":
                conditions.append(column.in_(accounts))
            elif name in ("org_id", "organization_id") and tenant.org_id:
                conditions.append(column == tenant.org_id)
            elif name == "user_id" or (name.endswith("_user_id") and name != "actor_user_id"):
                conditions.append(column.in_(users))
            elif "email" in name:
                conditions.append(column.in_(emails))
            elif name == "subject":
                conditions.append(column.in_(subjects))
        if not conditions:
            continue
        rows = await session.execute(select(table).where(or_(*conditions)))
        books[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return books


def diff(before: Books, after: Books) -> list[str]:
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = set(before.get(name, [])), set(after.get(name, []))
        changes += [f"{name}: - {row}" for row in sorted(old - new, key=repr)]
        changes += [f"{name}: + {row}" for row in sorted(new - old, key=repr)]
    return changes
