"""Admin routes: credit grants, the credit increment (audited), subscriptions; provisioning (users, their keys,
orgs; deactivation) and the read-only ledger audit, which together let a load test run against any deployment."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from creditgate.admin.ledger_audit import audit_ledger
from creditgate.auth import service as auth
from creditgate.auth.deps import AdminDep, RuntimeDep
from creditgate.cache import changed
from creditgate.catalog import pricing
from creditgate.db.models import MAX_ID, AdminAudit, ApiKey, AppSetting, Membership, Org, User, utcnow
from creditgate.errors import Conflict, InvalidRequest, NotFound
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.ledger import service as ledger
from creditgate.money import ALLOWED_INCREMENTS, check_increment, credits, from_hundredths
from creditgate.orgs import service as orgs
from creditgate.quotas.service import set_plan
from creditgate.users.schemas import Credits

router = APIRouter(route_class=GuardedRoute, prefix="/admin", tags=["admin"], responses=ERROR_RESPONSES(401, 403))


class CreditGrant(BaseModel):
    email: str | None = Field(default=None, min_length=3, max_length=320, description="a user's account, or…")
    org_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="…an organization's account")
    amount: Decimal = Field(description="credits, two decimals at most; negative only for adjustment")
    type: Literal["bonus", "adjustment"] = "bonus"
    idempotency_key: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=500)

    @field_validator("amount")
    @classmethod
    def _two_places(cls, value: Decimal) -> Decimal:
        if abs(value) > Decimal("1e12"):
            raise ValueError("amount is too large")
        return credits(value)

    @model_validator(mode="after")
    def _one_target(self) -> CreditGrant:
        if (self.email is None) == (self.org_id is None):
            raise ValueError("give exactly one of email or org_id")
        return self


class CreditGrantResult(BaseModel):
    entry_id: int
    balance_after: Credits
    replayed: bool


@router.post("/credits", response_model=CreditGrantResult, responses=ERROR_RESPONSES(402, 404, 409, 422))
async def grant_credits(body: CreditGrant, _: AdminDep, rt: RuntimeDep) -> CreditGrantResult:
    """Post a bonus or adjustment to a user's account; a repeated idempotency key replays the result."""
    try:
        return await _grant(rt, body)
    except IntegrityError:
        # A concurrent request with the same key won the unique constraint; replay its result.
        return await _grant(rt, body)


async def _grant(rt: RuntimeDep, body: CreditGrant) -> CreditGrantResult:
    async with rt.sessionmaker() as session, session.begin():
        if body.org_id is not None:
            account_id = await orgs.org_account_id(session, body.org_id)
        else:
            user = await auth.find_user(session, email=str(body.email))
            if user is None:
                raise NotFound(f"no user with email {body.email!r}")
            account_id = await auth.account_id_of(session, user_id=user.id)
        entry, created = await ledger.post_entry(
            session,
            account_id=account_id,
            amount=body.amount,
            type=body.type,
            idempotency_key=f"admin:{body.idempotency_key}",
            description=body.description,
        )
        return CreditGrantResult(
            entry_id=entry.id, balance_after=from_hundredths(entry.balance_after), replayed=not created
        )


class IncrementOut(BaseModel):
    increment: str = Field(description="the minimum credit increment every charge is rounded up to")
    allowed: list[str]


class IncrementIn(BaseModel):
    increment: Decimal


class AuditEntry(BaseModel):
    id: int
    actor_user_id: int
    key: str
    old_value: str | None
    new_value: str
    created_at: datetime


class AuditPage(BaseModel):
    data: list[AuditEntry]


class SubscriptionIn(BaseModel):
    email: str | None = Field(default=None, min_length=3, max_length=320)
    org_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    plan: str | None = Field(description="a plan name, or null to return to the default plan", max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionIn:
        if (self.email is None) == (self.org_id is None):
            raise ValueError("give exactly one of email or org_id")
        return self


class SubscriptionOut(BaseModel):
    subject: str
    plan: str
    monthly_calls: int | None


_ALLOWED = [str(i) for i in ALLOWED_INCREMENTS]


@router.get("/settings/credit-increment", response_model=IncrementOut)
async def get_increment(_: AdminDep, rt: RuntimeDep) -> IncrementOut:
    """The current minimum credit increment."""
    async with rt.sessionmaker() as session:
        value = await pricing.current_increment(session, default=rt.settings.default_credit_increment)
    return IncrementOut(increment=str(value), allowed=_ALLOWED)


@router.put("/settings/credit-increment", response_model=IncrementOut, responses=ERROR_RESPONSES(422))
async def put_increment(body: IncrementIn, admin: AdminDep, rt: RuntimeDep) -> IncrementOut:
    """Change the increment (0.01, 0.1 or 1.0); every worker uses it from the next request; audited."""
    try:
        value = check_increment(body.increment)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="increment", allowed=_ALLOWED) from exc
    async with rt.sessionmaker() as session, session.begin():
        row = await session.get(AppSetting, pricing.INCREMENT_KEY)
        old = row.value if row is not None else None
        if row is None:
            session.add(AppSetting(key=pricing.INCREMENT_KEY, value=str(value)))
        else:
            row.value, row.updated_at = str(value), utcnow()
        session.add(
            AdminAudit(actor_user_id=admin.user_id, key=pricing.INCREMENT_KEY, old_value=old, new_value=str(value))
        )
        await changed(session, "increment")
    return IncrementOut(increment=str(value), allowed=_ALLOWED)


@router.get("/audit", response_model=AuditPage)
async def audit(_: AdminDep, rt: RuntimeDep, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> AuditPage:
    """Admin changes to runtime settings, newest first: who, old, new, when."""
    async with rt.sessionmaker() as session:
        rows = await session.scalars(select(AdminAudit).order_by(AdminAudit.id.desc()).limit(limit))
        return AuditPage(
            data=[
                AuditEntry(
                    id=r.id,
                    actor_user_id=r.actor_user_id,
                    key=r.key,
                    old_value=r.old_value,
                    new_value=r.new_value,
                    created_at=r.created_at,
                )
                for r in rows
            ]
        )


@router.put("/subscriptions", response_model=SubscriptionOut, responses=ERROR_RESPONSES(404, 422))
async def put_subscription(body: SubscriptionIn, _: AdminDep, rt: RuntimeDep) -> SubscriptionOut:
    """Put a user or an org on a plan (its monthly call quota)."""
    async with rt.sessionmaker() as session, session.begin():
        if body.org_id is not None:
            await orgs.org_account_id(session, body.org_id)  # 404 if missing
            subject = f"org:{body.org_id}"
        else:
            user = await auth.find_user(session, email=str(body.email))
            if user is None:
                raise NotFound(f"no user with email {body.email!r}")
            subject = f"user:{user.id}"
        await set_plan(session, subject=subject, plan=body.plan, plans=rt.quotas.plans)
        plan = await rt.quotas.plan_of(session, subject)
    return SubscriptionOut(subject=subject, plan=plan, monthly_calls=rt.quotas.plans[plan])


# -- provisioning: users, keys, orgs, deactivation (idempotent; what `suites/load/run.py --target` uses) --------
EMAIL = r"^[^@\s]+@[^@\s]+$"
Email = Annotated[str, Field(min_length=3, max_length=320, pattern=EMAIL)]


class UserIn(BaseModel):
    email: Email


class UserOut(BaseModel):
    user_id: int
    email: str
    account_id: int = Field(description="the user's own account")
    org_id: int | None = Field(description="the org the user belongs to, if any")
    is_admin: bool
    created: bool = Field(description="false when the user already existed")


class KeyIn(BaseModel):
    email: Email
    ttl_seconds: int | None = Field(
        default=None, ge=60, le=90 * 86400, description="the key expires after this long (none: until revoked)"
    )


class KeyOut(BaseModel):
    key: str = Field(description="shown once; only its hash is stored")
    prefix: str
    user_id: int
    expires_at: datetime | None


class DeactivateIn(BaseModel):
    emails: list[Email] = Field(min_length=1, max_length=1000)


class DeactivateOut(BaseModel):
    users: int = Field(description="users found")
    keys_revoked: int
    missing: list[str] = Field(description="emails with no user")


class OrgIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    owner_email: Email


class OrgProvisioned(BaseModel):
    org_id: int
    account_id: int
    owner_user_id: int
    created: bool = Field(description="false when the owner already admins an org of this name")


async def _user(session: Any, email: str) -> User:
    user = await auth.find_user(session, email=email)
    if user is None:
        raise NotFound(f"no user with email {email!r}")
    return user


async def _user_out(session: Any, user: User, *, created: bool) -> UserOut:
    org_id = await session.scalar(
        select(Membership.org_id).where(Membership.user_id == user.id, Membership.role != auth.RETIRED)
    )
    account_id = await auth.account_id_of(session, user_id=user.id)
    return UserOut(
        user_id=user.id, email=user.email, account_id=account_id, org_id=org_id, is_admin=user.is_admin, created=created
    )


@router.put("/users", response_model=UserOut, responses=ERROR_RESPONSES(422))
async def put_user(body: UserIn, _: AdminDep, rt: RuntimeDep) -> UserOut:
    """Create a (non-admin) user with an empty account, or return the existing one: safe to repeat."""
    for attempt in range(2):
        try:
            async with rt.sessionmaker() as session, session.begin():
                user = await auth.find_user(session, email=body.email)
                if user is not None:
                    return await _user_out(session, user, created=False)
                user, _account = await auth.create_user(session, email=body.email)
                return await _user_out(session, user, created=True)
        except (IntegrityError, Conflict):  # a concurrent request created it first (seen at the flush or the check)
            if attempt:
                raise
    raise AssertionError("unreachable")


@router.post("/keys", response_model=KeyOut, status_code=201, responses=ERROR_RESPONSES(404, 409, 422))
async def issue_key(body: KeyIn, _: AdminDep, rt: RuntimeDep) -> KeyOut:
    """A new API key for a non-admin user (admin keys are made with `creditgate create-key --admin` only)."""
    async with rt.sessionmaker() as session, session.begin():
        user = await _user(session, body.email)
        if user.is_admin:
            raise Conflict("keys for admins are not issued through the API")
        ttl = timedelta(seconds=body.ttl_seconds) if body.ttl_seconds is not None else None
        key = await auth.issue_key(session, user_id=user.id, ttl=ttl)
        row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == auth.hash_key(key)))
        assert row is not None
        return KeyOut(key=key, prefix=row.prefix, user_id=user.id, expires_at=row.expires_at)


@router.post("/users/deactivate", response_model=DeactivateOut, responses=ERROR_RESPONSES(409, 422))
async def deactivate_users(body: DeactivateIn, _: AdminDep, rt: RuntimeDep) -> DeactivateOut:
    """Revoke every active key of these (non-admin) users; their ledgers stay as they are. Safe to repeat."""
    emails = sorted(set(body.emails))
    async with rt.sessionmaker() as session, session.begin():
        users = list(await session.scalars(select(User).where(User.email.in_(emails))))
        if admins := [u.email for u in users if u.is_admin]:
            raise Conflict("admins are not deactivated through this route", emails=admins)
        revoked = 0
        if users:
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.user_id.in_([u.id for u in users]), ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            revoked = int(getattr(result, "rowcount", 0) or 0)
            await changed(session, "principal")  # every worker stops taking the revoked keys
    found = {u.email for u in users}
    return DeactivateOut(users=len(users), keys_revoked=revoked, missing=[e for e in emails if e not in found])


@router.post("/orgs", response_model=OrgProvisioned, responses=ERROR_RESPONSES(404, 409, 422))
async def provision_org(body: OrgIn, _: AdminDep, rt: RuntimeDep) -> OrgProvisioned:
    """An org owned (administered) by an existing user; repeated with the same owner and name, the same org."""
    for attempt in range(2):
        try:
            async with rt.sessionmaker() as session, session.begin():
                owner = await _user(session, body.owner_email)
                seat = await session.scalar(
                    select(Membership).where(Membership.user_id == owner.id, Membership.role != auth.RETIRED)
                )
                if seat is not None:
                    org = await session.get(Org, seat.org_id)
                    if org is None or seat.role != "admin" or org.name != body.name:
                        raise Conflict(f"{body.owner_email} already belongs to another organization")
                    account_id = await orgs.org_account_id(session, org.id)
                    return OrgProvisioned(org_id=org.id, account_id=account_id, owner_user_id=owner.id, created=False)
                principal = await auth.principal_for(
                    session, user_id=owner.id, email=owner.email, is_admin=False, personal_account_id=0
                )
                org = await orgs.create(session, name=body.name, creator=principal)
                account_id = await orgs.org_account_id(session, org.id)
                return OrgProvisioned(org_id=org.id, account_id=account_id, owner_user_id=owner.id, created=True)
        except IntegrityError:  # a concurrent request seated the owner first
            if attempt:
                raise
    raise AssertionError("unreachable")


# -- the read-only ledger audit --------------------------------------------------------------------------------
class AuditFinding(BaseModel):
    check: str
    subject: str
    detail: str


class AccountAudit(BaseModel):
    account_id: int
    balance: Credits
    open_holds: int
    open_held: Credits
    stale_holds: int = Field(description="open holds past their expiry (+ grace): the sweeper missed them")
    last_open_expiry: datetime | None = Field(description="when the last open hold expires")
    since_entry: dict[str, Credits] = Field(description="amounts by entry type after the given entry id")


class LedgerAuditOut(BaseModel):
    ok: bool
    scope: Literal["ledger", "accounts"]
    accounts: int
    entries: int
    holds: int
    last_entry_id: int = Field(description="the newest entry in scope: pass it as since_entry to a later audit")
    checked_at: datetime
    violations: list[AuditFinding]
    balances: list[AccountAudit] = Field(description="per account, when account_id is given")


@router.get("/ledger/audit", response_model=LedgerAuditOut, responses=ERROR_RESPONSES(422))
async def ledger_audit(
    _: AdminDep,
    rt: RuntimeDep,
    account_id: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None,
        Query(
            max_length=500,
            description="audit these accounts only (repeat the parameter; at most 500, so the URL stays under "
            "the server's 16 KB request-line limit)",
        ),
    ] = None,
    since_entry: Annotated[int, Query(ge=0, le=MAX_ID, description="for balances[].since_entry")] = 0,
    grace_seconds: Annotated[float, Query(ge=0, le=86400, description="allow holds this long past expiry")] = 0,
) -> LedgerAuditOut:
    """The ledger auditor's invariants on the whole ledger, or on some accounts (with their balances and holds);
    reads only (a read-only transaction on Postgres)."""
    now = utcnow()
    report = await audit_ledger(
        rt.engine, account_ids=account_id, since_entry=since_entry, grace=timedelta(seconds=grace_seconds), now=now
    )
    return LedgerAuditOut(
        ok=report.ok,
        scope="ledger" if account_id is None else "accounts",
        accounts=report.accounts,
        entries=report.entries,
        holds=report.holds,
        last_entry_id=report.last_entry_id,
        checked_at=now,
        violations=[AuditFinding(check=f.check, subject=f.subject, detail=f.detail) for f in report.findings],
        balances=[
            AccountAudit(
                account_id=f.account_id,
                balance=from_hundredths(f.balance),
                open_holds=f.open_holds,
                open_held=from_hundredths(f.open_held),
                stale_holds=f.stale_holds,
                last_open_expiry=f.last_open_expiry,
                since_entry={k: from_hundredths(v) for k, v in sorted(f.since.items())},
            )
            for f in report.figures
        ],
    )
