"""Orgs and memberships. A member's requests spend the org's account within their allocation."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.auth.service import Principal
from creditgate.cache import changed
from creditgate.db.models import Account, Hold, Membership, Org, User
from creditgate.errors import Conflict, NotFound, PermissionDenied
from creditgate.ledger import service as ledger
from creditgate.money import from_hundredths, to_hundredths


@dataclass(frozen=True, slots=True)
class MemberView:
    user_id: int
    email: str
    role: str
    allocation: Decimal
    used: Decimal


@dataclass(frozen=True, slots=True)
class OrgView:
    id: int
    name: str
    balance: Decimal
    allocated: Decimal
    members: list[MemberView]


async def _membership_of(session: AsyncSession, user_id: int) -> Membership | None:
    membership: Membership | None = await session.scalar(select(Membership).where(Membership.user_id == user_id))
    return membership


async def create(session: AsyncSession, *, name: str, creator: Principal) -> Org:
    """A new org with its own account; the creator becomes its admin (with no allocation yet)."""
    if await _membership_of(session, creator.user_id) is not None:
        raise Conflict("you already belong to an organization")
    org = Org(name=name)
    session.add(org)
    await session.flush()
    session.add(Account(org_id=org.id))  # balance, allocation and used start at the columns' default, 0
    session.add(Membership(org_id=org.id, user_id=creator.user_id, role="admin"))
    await session.flush()
    await changed(session, "principal")
    return org


async def org_account_id(session: AsyncSession, org_id: int) -> int:
    account_id = await session.scalar(select(Account.id).where(Account.org_id == org_id))
    if account_id is None:
        raise NotFound(f"organization {org_id} does not exist")
    return account_id


async def require_role(session: AsyncSession, *, org_id: int, principal: Principal, admin: bool) -> None:
    """404 if the org does not exist; 403 unless the caller belongs to it (as admin, when ``admin``)."""
    if await session.get(Org, org_id) is None:
        raise NotFound(f"organization {org_id} does not exist")
    if principal.is_admin:
        return
    membership = await _membership_of(session, principal.user_id)
    if membership is None or membership.org_id != org_id:
        raise PermissionDenied("you are not a member of this organization")
    if admin and membership.role != "admin":
        raise PermissionDenied("only an organization admin can do this")


async def view(session: AsyncSession, org_id: int) -> OrgView:
    org = await session.get(Org, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} does not exist")
    balance = await ledger.balance_of(session, await org_account_id(session, org_id))
    rows = await session.execute(
        select(Membership, User.email)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org_id)
        .order_by(Membership.id)
    )
    members = [
        MemberView(m.user_id, email, m.role, from_hundredths(m.allocation), from_hundredths(m.used))
        for m, email in rows
    ]
    allocated = sum((m.allocation for m in members), Decimal("0.00"))
    return OrgView(org.id, org.name, balance, allocated, members)


async def add_member(session: AsyncSession, *, org_id: int, email: str, allocation: Decimal, role: str) -> Membership:
    user_id = await session.scalar(select(User.id).where(User.email == email))
    if user_id is None:
        raise NotFound(f"no user with email {email!r}; they must sign up first")
    if await _membership_of(session, user_id) is not None:
        raise Conflict(f"{email} already belongs to an organization")
    membership = Membership(org_id=org_id, user_id=user_id, role=role, allocation=to_hundredths(allocation))
    session.add(membership)
    await session.flush()
    await changed(session, "principal")
    return membership


async def _member(session: AsyncSession, *, org_id: int, user_id: int) -> Membership:
    membership = await _membership_of(session, user_id)
    if membership is None or membership.org_id != org_id:
        raise NotFound(f"user {user_id} is not a member of organization {org_id}")
    return membership


async def set_allocation(session: AsyncSession, *, org_id: int, user_id: int, allocation: Decimal) -> Membership:
    """A new allocation; it may go below what was used (no more spending until it is raised again)."""
    membership = await _member(session, org_id=org_id, user_id=user_id)
    membership.allocation = to_hundredths(allocation)
    await session.flush()
    return membership


async def remove_member(session: AsyncSession, *, org_id: int, user_id: int) -> None:
    membership = await _member(session, org_id=org_id, user_id=user_id)
    open_holds = await session.scalar(
        select(func.count()).select_from(Hold).where(Hold.membership_id == membership.id, Hold.status == "open")
    )
    if open_holds:
        raise Conflict("the member has requests in flight; try again when they finish")
    # Closed holds keep their history: detach them from the seat that is going away.
    await session.execute(update(Hold).where(Hold.membership_id == membership.id).values(membership_id=None))
    await session.delete(membership)
    await session.flush()
    await changed(session, "principal")
