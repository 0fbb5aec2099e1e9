"""The tenant matrix (issue 26): every route of the OpenAPI schema × every kind of caller × whose ids it names.

Generated from the gateway's own schema (``app.openapi()``), so a route added later is in the matrix without
editing this file; a route that is public by design must be listed in ``PUBLIC`` with its reason instead.

Callers: no key, a bad key, an unrelated user (no org), a member of org A, the admin of org A, a platform admin.
Ids (the request's path, query and body fields that point at a tenant's resource, ``_world.FIELD_KINDS``):

- ``own``: the caller's own (tenant A for the org member and admin and for the keyless callers; the unrelated
  user's and the platform admin's own user, account and key, and no org: their org-scoped cases do not exist);
- ``other``: tenant B's, the victim;
- ``mixed``: the caller's own org with tenant B's other ids (B's user in A's org path: the IDOR a check on the
  org alone would let through);
- ``-``: the route takes no tenant id (one case per caller).

Each case runs on a fresh copy of one world (``_world.build_world``, built once per session through the API), and
checks what the operator's rules say, not what the code does:

- never a 5xx; the status is one the route documents; no key or a bad key → 401, a valid key never 401;
- an admin route (``/admin/…``) refuses everyone but a platform admin with 403;
- an unrelated user, an org member or another org's admin naming B's ids (``other``/``mixed``) → 403 or 404;
- nobody gets a 2xx on B's ids but a platform admin on an admin route (or on ``PLATFORM_ADMIN_OVERRIDES``);
- B's books — every row of every table that belongs to B (balance, ledger entries, holds, org, allocations,
  memberships, keys, BYOK keys, payments, plans, invitations) — are the same after the call as before, unless a
  platform admin acted on them through an admin route; and no answer to a non-admin contains B's secrets;
- the org admin acting on their own org is not refused (else the matrix would pass for the wrong reason).

Speed (~290 cases): the world is a SQLite file copied per case; one app object serves every case, its lifespan
(engine, caches, quotas, clients: all a request touches) started afresh by each case's ``async_client``; the
default TLS context is computed once (``_cheaper_gateway_starts``).
"""

from __future__ import annotations

import functools
import re
import secrets
import shutil
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx._config import create_ssl_context
from starlette.routing import Mount

from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.main import create_app
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.testing.catalog import catalog_for_tests
from creditgate_harness.fakes.providers import FakeProvider
from creditgate_harness.fakes.signers import LAGO_HMAC_KEY, TELEGRAM_BOT_TOKEN
from creditgate_harness.fixtures.database import DatabaseCheck
from creditgate_harness.fixtures.fakes import STRIPE_KEY, STRIPE_WEBHOOK_SECRET
from creditgate_harness.services.base import run_sync
from suites.adversarial._world import (
    CONSTANT_PARAMS,
    ORG_KINDS,
    Books,
    Field,
    Operation,
    Person,
    Tenant,
    World,
    build_world,
    diff,
    operations,
    request_body,
    snapshot,
    world_settings,
)

SCHEMA: dict[str, Any] = create_app(Settings(_env_file=None), catalog=catalog_for_tests()).openapi()
OPERATIONS = operations(SCHEMA)

# -- routes that are public by design (checked to exist; a route missing from this list is in the matrix) -------
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/"): "what this service is (name, version, docs link)",
    ("GET", "/health"): "liveness for load balancers and orchestrators; no tenant data",
    ("GET", "/catalog/models"): "the public price list",
    ("GET", "/catalog/providers"): "the public provider list (what BYOK keys can be stored for)",
    ("POST", "/billing/webhook"): "Stripe's webhook: authenticated by its Stripe-Signature, not an API key",
    ("POST", "/integrations/lago/webhook"): "Lago's webhook: authenticated by its HMAC/JWT signature",
    ("POST", "/auth/telegram/exchange"): "trades Telegram-signed initData for a key: the signature is the auth",
    ("GET", "/metrics"): "Prometheus scrape, hidden from the schema; move it off-port with CREDITGATE_METRICS_PORT",
    ("GET", "/openapi.json"): "the OpenAPI document",
    ("GET", "/docs"): "Swagger UI",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI's OAuth2 redirect page",
    ("GET", "/redoc"): "ReDoc",
}
# Public routes that take a signature instead of a key: an unsigned call must not succeed.
SIGNED = {("POST", "/billing/webhook"), ("POST", "/integrations/lago/webhook"), ("POST", "/auth/telegram/exchange")}
# Mounted only in some configurations (checked on an app built with them): path → reason.
PUBLIC_MOUNTS = {"/demo/stripe": "`creditgate serve --demo`: the demo's fake Stripe checkout page, in-process"}

# Non-admin routes where a platform admin may act on any tenant by design (each with where the rule lives).
PLATFORM_ADMIN_OVERRIDES = {
    "/orgs/{": "orgs.service.require_role lets a platform admin view and manage any org (the operator's override)",
    "/billing/checkout": "the same require_role: a platform admin may start a top-up for any org",
}

# Real bugs found by this matrix, reported, until fixed: (method, path, caller, ids) → reason. An entry whose case
# passes fails the run (strict); one whose route is gone from the schema is reported as a warning: remove it.
# Real bugs the matrix found, each marked xfail(strict) until fixed; empty now. It found one: an org admin seated
# any user in no org by email, without consent (POST /orgs/{org_id}/members; fixed by invite + accept, F1).
KNOWN_BUGS: dict[tuple[str, str, str, str], str] = {}

CALLERS = ("no_key", "bad_key", "unrelated", "member", "org_admin", "platform_admin")
KEYLESS = ("no_key", "bad_key")
TENANT_CALLERS = ("unrelated", "member", "org_admin")  # an authenticated caller who is not the platform operator
IN_ORG_A = ("no_key", "bad_key", "member", "org_admin")  # callers whose own ids include an org (tenant A)


def is_admin_route(op: Operation) -> bool:
    return op.path.startswith("/admin/") or "admin" in op.tags


def admin_override(op: Operation) -> bool:
    return is_admin_route(op) or any(op.path.startswith(prefix) for prefix in PLATFORM_ADMIN_OVERRIDES)


def case_variants(op: Operation, caller: str, ids: str) -> list[tuple[Field, ...]]:
    """The requests this case sends (one per way of pointing at a tenant); [] when the case cannot exist."""
    variants = op.variants()
    if ids == "own" and caller not in IN_ORG_A:  # no org of their own to name
        variants = [v for v in variants if not any(f.kind in ORG_KINDS for f in v)]
    if ids == "mixed":
        variants = [v for v in variants if any(f.kind == "org" for f in v) and any(f.kind != "org" for f in v)]
    if (ids == "mixed" and caller not in ("member", "org_admin")) or (ids == "own" and caller in KEYLESS):
        return []  # a keyless caller has no ids of its own (its 401 comes first: "other" covers it)
    return variants


def build_cases() -> list[Any]:
    cases = []
    for op in OPERATIONS:
        if (op.method, op.path) in PUBLIC:
            continue
        id_modes = ("own", "other", "mixed") if op.tenant_fields else ("-",)
        for caller in CALLERS:
            for ids in id_modes:
                if op.tenant_fields and not case_variants(op, caller, ids):
                    continue
                key = (op.method, op.path, caller, ids)
                marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])] if key in KNOWN_BUGS else []
                cases.append(pytest.param(op, caller, ids, id=f"{op.label}-{caller}-{ids}", marks=marks))
    return cases


CASES = build_cases()
_GENERATED = {(p.values[0].method, p.values[0].path, p.values[1], p.values[2]) for p in CASES}
for _stale in sorted(set(KNOWN_BUGS) - _GENERATED):
    warnings.warn(f"KNOWN_BUGS names a case the schema no longer generates (remove it): {_stale}", stacklevel=1)


# -- the world: built once per session, copied into each case's database; one gateway app, started per case ------
@pytest.fixture(scope="session")
def tenant_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    world: World = run_sync(build_world(tmp_path_factory.mktemp("tenant-world") / "world.db"))
    return world


@pytest.fixture(scope="session")
def victim_books(tenant_world: World) -> Books:
    """Tenant B's books as the world leaves them: what every case starts from."""

    async def read() -> Books:
        engine = create_engine(f"sqlite+aiosqlite:///{tenant_world.db_path}", pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session:
                return await snapshot(session, tenant_world.b)
        finally:
            await engine.dispose()

    books: Books = run_sync(read())
    return books


@pytest.fixture(scope="session")
def case_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenant-matrix") / "case.db"


@pytest.fixture
def database_url(tenant_world: World, case_db: Path, database_check: DatabaseCheck | None) -> Iterator[str]:
    """A fresh copy of the world for each case, always at one path (so one app serves them all); audited after,
    like the harness's ``database_url``. The previous case's gateway has stopped: no connection is open on it."""
    for leftover in ("-wal", "-shm", "-journal"):
        Path(f"{case_db}{leftover}").unlink(missing_ok=True)
    shutil.copyfile(tenant_world.db_path, case_db)
    url = f"sqlite+aiosqlite:///{case_db}"
    yield url
    if database_check is not None and (problem := database_check(url)):
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def matrix_app(tenant_world: World, case_db: Path) -> FastAPI:
    """The gateway, built once: FastAPI builds its routing on an app's first request (~60 ms, half a case). All the
    state a request touches (engine, caches, quotas, breakers, clients) is the Runtime its lifespan makes, and
    ``async_client`` runs the lifespan for each case, so every case still meets a freshly started gateway."""
    settings = world_settings(f"sqlite+aiosqlite:///{case_db}", tenant_world.byok_key).model_copy(
        update={
            "stripe_secret_key": STRIPE_KEY,  # the harness's in-process fake Stripe (fake_stripe) answers it
            "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET,
            "telegram_bot_token": TELEGRAM_BOT_TOKEN,
            "lago_hmac_key": LAGO_HMAC_KEY,
        }
    )
    upstream = httpx.ASGITransport(app=FakeProvider().app)
    return create_app(settings, catalog=catalog_for_tests(), upstream_transport=upstream)


@pytest.fixture
def cg_app(matrix_app: FastAPI, database_url: str, request: pytest.FixtureRequest) -> FastAPI:
    """``matrix_app`` for the harness's ``async_client``/``cg_runtime``; Stripe faked where a route may call it."""
    params = getattr(request.node, "callspec", None)
    op = params.params.get("op") if params else None
    if op is None or "billing" in op.tags or op.path.startswith("/billing"):
        request.getfixturevalue("fake_stripe")
    return matrix_app


_CREATE_TLS = create_ssl_context


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return _CREATE_TLS()


@pytest.fixture(autouse=True)
def _cheaper_gateway_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case starts the gateway; one start-up cost is paid once here instead of ~300 times: each HTTP client
    loading the CA bundle (the clients share one default TLS context; any other verify/cert setting gets its own).
    The head revision is read once a process by the gateway itself (creditgate.db.migrate.head_revision)."""

    def shared(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is True and cert is None and trust_env:
            return _default_tls()
        return _CREATE_TLS(verify=verify, cert=cert, trust_env=trust_env)

    monkeypatch.setattr("httpx._transports.default.create_ssl_context", shared)


def caller_of(world: World, caller: str) -> tuple[dict[str, str], Tenant, Person]:
    """The caller's headers, own tenant, and own user (a keyless caller's "own" is tenant A's owner's)."""
    if caller == "no_key":
        return {}, world.a, world.a.owner
    if caller == "bad_key":
        return {"Authorization": f"Bearer cg_{secrets.token_urlsafe(32)}"}, world.a, world.a.owner
    if caller == "unrelated":
        return world.loner.owner.headers, world.loner, world.loner.owner
    if caller == "member":
        assert world.a.member is not None
        return world.a.member.headers, world.a, world.a.member
    if caller == "org_admin":
        return world.a.owner.headers, world.a, world.a.owner
    return world.admin.owner.headers, world.admin, world.admin.owner


def fill(
    op: Operation, fields: tuple[Field, ...], home: Tenant, me: Person, victim: Tenant, ids: str
) -> dict[str, Any]:
    """Each tenant field's value: the caller's own, the victim's, or (mixed) the caller's org and the victim's rest."""
    values: dict[str, Any] = {}
    for f in fields:
        own = ids == "own" or (ids == "mixed" and f.kind == "org")
        source = home if own else victim
        value = source.value(f.kind, me if own else None)
        if value is None:
            pytest.fail(f"{op.label}: the world has no {f.kind!r} for {f.name} ({source.label}): add it to _world.py")
        if f.array and not isinstance(value, list):
            value = [value]
        values[f.name] = value
    return values


def send_args(op: Operation, values: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    path = op.path
    query: dict[str, Any] = {}
    path_values = {f.name: v for f in op.tenant_fields if f.where == "path" for v in [values.get(f.name)]}
    for name, value in {**CONSTANT_PARAMS, **path_values}.items():
        path = path.replace("{" + name + "}", str(value))
    for f in op.tenant_fields:
        if f.where == "query" and f.name in values:
            query[f.name] = values[f.name]
    body_values = {f.name: values[f.name] for f in op.tenant_fields if f.where == "body" and f.name in values}
    return path, query, request_body(SCHEMA, op, body_values)


@pytest.mark.parametrize(("op", "caller", "ids"), CASES)
async def test_tenant_matrix(
    op: Operation,
    caller: str,
    ids: str,
    tenant_world: World,
    victim_books: Books,
    async_client: httpx.AsyncClient,
    cg_runtime: Runtime,
) -> None:
    if op.unknown_params:
        pytest.fail(
            f"{op.label}: no value for path parameter(s) {', '.join(op.unknown_params)}: "
            "teach suites/adversarial/_world.py (FIELD_KINDS, SEGMENT_KINDS or CONSTANT_PARAMS) how to fill them"
        )
    headers, home, me = caller_of(tenant_world, caller)
    victim = tenant_world.b
    variants = case_variants(op, caller, ids) if op.tenant_fields else [()]
    before = victim_books
    for fields in variants:
        values = fill(op, fields, home, me, victim, ids)
        path, query, body = send_args(op, values)
        request = f"{op.method} {path}" + (f" ?{query}" if query else "") + (f" {body}" if body is not None else "")
        response = await async_client.request(op.method, path, params=query, json=body, headers=headers)
        async with cg_runtime.sessionmaker() as session:
            after = await snapshot(session, victim)
        problems = judge(op, caller, ids, fields, response, request, victim)
        changes = diff(before, after)
        may_change = caller == "platform_admin" and ids == "other" and admin_override(op)
        if changes and not may_change:
            problems.append("the victim's books changed:\n      " + "\n      ".join(changes[:20]))
        if problems:
            pytest.fail(
                f"{op.label} as {caller} with {ids} ids\n  request: {request}\n"
                f"  answer:  {response.status_code} {response.text[:400]}\n  - " + "\n  - ".join(problems),
                pytrace=False,
            )
        before = after


def judge(
    op: Operation,
    caller: str,
    ids: str,
    fields: tuple[Field, ...],
    response: httpx.Response,
    request: str,
    victim: Tenant,
) -> list[str]:
    status = response.status_code
    problems = []
    foreign = ids in ("other", "mixed")
    if status >= 500:
        problems.append(f"a server error ({status})")
    if str(status) not in op.documented and "default" not in op.documented:
        problems.append(f"{status} is not documented for this route (documented: {sorted(op.documented)})")
    if caller in KEYLESS:
        if status != 401:
            problems.append(f"{caller}: expected 401, got {status}")
        return problems
    if status == 401:
        problems.append("a valid key was refused with 401 (the world is broken, or the route is)")
    if status in (400, 422):
        problems.append(f"{status}: the request did not pass validation, so it never reached the authorization rule")
    if is_admin_route(op) and caller != "platform_admin" and status != 403:
        problems.append(f"an admin route answered {status} to a non-admin ({caller}); expected 403")
    if foreign and caller in TENANT_CALLERS and status not in (403, 404):
        problems.append(f"{caller} named tenant B's ids and got {status}; expected 403 or 404")
    if foreign and caller == "platform_admin" and not admin_override(op) and response.is_success:
        problems.append(f"a platform admin got {status} on tenant B's resource through a non-admin route")
    if (
        ids == "own"
        and caller == "org_admin"
        and any(f.kind == "org" and f.where == "path" for f in fields)
        and status in (403, 404)
    ):
        problems.append(f"the org admin was refused ({status}) on their own org: the ids or the world are wrong")
    if caller in TENANT_CALLERS:
        leaked = sorted(s for s in victim.secrets() if s in response.text and s not in request)
        if leaked:
            problems.append(f"the answer contains tenant B's data: {leaked}")
    return problems


# -- the list of public routes cannot rot ----------------------------------------------------------------------
def routes_of(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, hidden ones included (FastAPI ≥ 0.165 nests included routers)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is flat
        contexts: Any = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    found = set()
    for route in contexts:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", getattr(route, "path", ""))  # {model_id:path} → {model_id}
        found |= {(m, path) for m in (getattr(route, "methods", None) or set()) if m != "HEAD"}
    return found


def test_public_routes_exist_and_every_other_route_is_in_the_matrix(cg_app: FastAPI) -> None:
    served = routes_of(cg_app)
    in_schema = {(op.method, op.path) for op in OPERATIONS}
    gone = sorted(set(PUBLIC) - served)
    assert not gone, f"listed as public but no longer served (remove them from PUBLIC): {gone}"
    hidden = sorted(served - in_schema - set(PUBLIC))
    assert not hidden, f"served, not in the schema (so not in the matrix) and not listed as public: {hidden}"
    demo = create_app(Settings(_env_file=None, demo=True), catalog=catalog_for_tests())
    mounts = {r.path for r in demo.routes if isinstance(r, Mount)}
    assert not set(PUBLIC_MOUNTS) - mounts, f"listed public mounts no longer mounted: {set(PUBLIC_MOUNTS) - mounts}"
    assert not mounts - set(PUBLIC_MOUNTS), f"mounted and not listed as public: {mounts - set(PUBLIC_MOUNTS)}"
    for op in OPERATIONS:
        if (op.method, op.path) not in PUBLIC:
            assert op.authenticated, f"{op.label} declares no security scheme and is not listed as public"
    assert len(CASES) >= 3 * len(in_schema - set(PUBLIC)), "the matrix lost its cases"


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC), ids=[f"{m} {p}" for m, p in sorted(PUBLIC)])
async def test_public_route_without_a_key(method: str, path: str, async_client: httpx.AsyncClient) -> None:
    """A public route answers a keyless call without a server error; a signed one refuses it unsigned."""
    body: dict[str, Any] | None = {} if method == "POST" else None
    if path == "/auth/telegram/exchange":
        body = {"init_data": "user=%7B%22id%22%3A1%7D&hash=00"}
    response = await async_client.request(method, path, json=body)
    assert response.status_code not in (404, 405), f"{method} {path} is listed in PUBLIC but not served"
    assert response.status_code < 500, response.text
    if (method, path) in SIGNED:
        assert not response.is_success, f"{method} {path} accepted an unsigned call: {response.text}"
