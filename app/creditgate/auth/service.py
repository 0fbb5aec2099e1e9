"""Users and API keys. Keys are shown once and stored as SHA-256 digests (they carry 256 bits of entropy)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from creditgate.cache import Caches
from creditgate.db.models import Account, ApiKey, Membership, User, utcnow
from creditgate.errors import Conflict
from creditgate.ledger import service as ledger

KEY_PREFIX = "cg_"
RETIRED = "former"  # a seat's role once its member left or was removed (creditgate.orgs.service): no member


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user, their account and their role."""

    user_id: int
    email: str
    account_id: int  # the account requests are charged to: the org's for an org member
    is_admin: bool
    personal_account_id: int = 0
    org_id: int | None = None
    membership_id: int | None = None
    org_role: str | None = None

    @property
    def quota_subject(self) -> str:
        """Whose monthly call quota a request counts against."""
        return f"org:{self.org_id}" if self.org_id is not None else f"user:{self.user_id}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_user(
    session: AsyncSession, *, email: str, is_admin: bool = False, credits: Decimal = Decimal(0)
) -> tuple[User, Account]:
    """A user with an account; an opening ``bonus`` ledger entry when ``credits`` > 0."""
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"a user with email {email!r} already exists")
    user = User(email=email, is_admin=is_admin)
    session.add(user)
    await session.flush()
    account = await ledger.open_account(session, user_id=user.id)
    if credits > 0:
        await ledger.post_entry(
            session, account_id=account.id, amount=credits, type="bonus", description="opening credits"
        )
    return user, account


async def issue_key(session: AsyncSession, *, user_id: int, ttl: timedelta | None = None) -> str:
    """Create an API key for a user (expiring after ``ttl`` if given) and return it; only its hash is stored."""
    key = new_key()
    expires_at = utcnow() + ttl if ttl is not None else None
    session.add(ApiKey(user_id=user_id, prefix=key[:10], key_hash=hash_key(key), expires_at=expires_at))
    await session.flush()
    return key


async def find_user(session: AsyncSession, *, email: str) -> User | None:
    user: User | None = await session.scalar(select(User).where(User.email == email))
    return user


async def authenticate(session: AsyncSession, key: str) -> Principal | None:
    """The principal behind an API key, or ``None`` for an unknown, revoked or expired key (one query)."""
    found = await _lookup(session, hash_key(key))
    return found[0] if found is not None and _valid(found[1]) else None


async def authenticate_cached(
    caches: Caches, sessionmaker: async_sessionmaker[AsyncSession], key: str
) -> Principal | None:
    """``authenticate`` through the principal cache (a key's expiry is still checked on every use)."""
    digest = hash_key(key)
    found: tuple[Principal, datetime | None] | None = caches.principal.get(digest)
    if found is None:
        since = caches.principal.generation  # a change committed during the lookup must not be cached over
        async with sessionmaker() as session:
            found = await _lookup(session, digest)
        if found is None:
            return None
        caches.principal.put(digest, found, since=since)
    return found[0] if _valid(found[1]) else None


def _valid(expires_at: datetime | None) -> bool:
    return expires_at is None or expires_at > utcnow()  # the UTC column type always gives an aware datetime


async def _lookup(session: AsyncSession, digest: str) -> tuple[Principal, datetime | None] | None:
    org_account = aliased(Account)
    row = (
        await session.execute(
            select(
                User.id,
                User.email,
                User.is_admin,
                Account.id.label("account_id"),
                Membership.id.label("membership_id"),
                Membership.org_id,
                Membership.role,
                org_account.id.label("org_account"),
                ApiKey.expires_at,
            )
            .join(ApiKey, ApiKey.user_id == User.id)
            .join(Account, Account.user_id == User.id)
            .outerjoin(Membership, and_(Membership.user_id == User.id, Membership.role != RETIRED))
            .outerjoin(org_account, org_account.org_id == Membership.org_id)
            .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
        )
    ).one_or_none()
    if row is None:
        return None
    if row.membership_id is None:
        return Principal(row.id, row.email, row.account_id, row.is_admin, row.account_id), row.expires_at
    principal = Principal(
        row.id, row.email, row.org_account, row.is_admin, row.account_id, row.org_id, row.membership_id, row.role
    )
    return principal, row.expires_at


async def principal_for(
    session: AsyncSession, *, user_id: int, email: str, is_admin: bool, personal_account_id: int
) -> Principal:
    """A member of an org spends the org's account; everyone else their own."""
    member = (
        await session.execute(
            select(Membership.id, Membership.org_id, Membership.role, Account.id.label("org_account"))
            .join(Account, Account.org_id == Membership.org_id)
            .where(Membership.user_id == user_id, Membership.role != RETIRED)
        )
    ).one_or_none()
    if member is None:
        return Principal(user_id, email, personal_account_id, is_admin, personal_account_id)
    return Principal(
        user_id, email, member.org_account, is_admin, personal_account_id, member.org_id, member.id, member.role
    )


async def account_id_of(session: AsyncSession, *, user_id: int) -> int:
    account_id = await session.scalar(select(Account.id).where(Account.user_id == user_id))
    assert account_id is not None, "every user has an account"
    return account_id
