"""Orgs, invitations and memberships. A member's requests spend the org's account within their allocation.

Joining is by consent: an org admin invites an email (``invite``), and nothing changes for that user, not even
whether their requests are charged to them, until they ``accept``; they may ``decline``. The inviter gets the
same answer for every email: an account with it, none (the invitation waits for whoever signs up with it), or one
already in an org (the conflict is the invitee's to hear, when they accept).

A seat ends when its member leaves or an admin removes them: refused (409) while the member has requests in flight,
since their holds count against the seat. A request that started before the seat ended still carries its id (the
identity was read a moment earlier, here or in another worker), so the seat is not deleted at once: it is first
*retired* (role ``former``, allocation 0: such a request is refused with a 402, never charged to an org that
removed its member), and deleted ``RETIRE_GRACE_SECONDS`` later, or when that user next joins or founds an org.
Ending a seat moves no credit: the org's account keeps its balance; what the member spent stays spent and
attributed to them in the org's ledger; their own account was never touched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, cast

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth.service import RETIRED, Principal
from creditgate.cache import changed
from creditgate.db.models import Account, Hold, Membership, Org, OrgInvitation, User, utcnow
from creditgate.errors import Conflict, NotFound, PermissionDenied
from creditgate.ledger import service as ledger
from creditgate.money import from_hundredths, to_hundredths

RETIRE_GRACE_SECONDS = 0.5  # from retiring a seat (role RETIRED) to deleting it: longer than a request takes to reach
# its hold, and than a change notification takes to reach every worker


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


InvitationStatus = Literal["pending", "accepted", "declined", "revoked"]


@dataclass(frozen=True, slots=True)
class InvitationView:
    id: int
    org_id: int
    org_name: str
    email: str
    role: str
    allocation: Decimal
    status: InvitationStatus
    invited_by: str | None
    created_at: datetime


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def _membership_of(session: AsyncSession, user_id: int) -> Membership | None:
    """The user's seat, unless it is retired."""
    membership: Membership | None = await session.scalar(
        select(Membership).where(Membership.user_id == user_id, Membership.role != RETIRED)
    )
    return membership


async def _lock_seat(session: AsyncSession, user_id: int) -> Membership | None:
    """The user's seat (retired or not), locked: the ledger's holds take this row's lock while they are placed, so
    once we hold it every hold naming the seat has committed (and is seen by our next statement) or waits for us."""
    seat: Membership | None = await session.scalar(
        select(Membership).where(Membership.user_id == user_id).with_for_update()
    )
    return seat


async def _open_holds(session: AsyncSession, membership_id: int) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Hold).where(Hold.membership_id == membership_id, Hold.status == "open")
    )
    return int(count or 0)


async def _delete_seat(session: AsyncSession, seat: Membership) -> None:
    # Closed holds keep their history: detach them from the seat that is going away.
    await session.execute(update(Hold).where(Hold.membership_id == seat.id).values(membership_id=None))
    await session.delete(seat)
    await session.flush()


async def _clear_retired_seat(session: AsyncSession, user_id: int) -> None:
    """Before a user takes a new seat: delete their retired one (409 if a request of theirs still holds on it)."""
    seat = await _lock_seat(session, user_id)
    if seat is None or seat.role != RETIRED:
        return
    if await _open_holds(session, seat.id):
        raise Conflict("your requests from your previous organization are still in flight; try again when they finish")
    await _delete_seat(session, seat)


async def create(session: AsyncSession, *, name: str, creator: Principal) -> Org:
    """A new org with its own account; the creator becomes its admin (with no allocation yet)."""
    if await _membership_of(session, creator.user_id) is not None:
        raise Conflict("you already belong to an organization")
    await _clear_retired_seat(session, creator.user_id)
    org = Org(name=name)
    session.add(org)
    await session.flush()
    session.add(Account(org_id=org.id))  # balance, allocation and used start at the columns' default, 0
    session.add(Membership(org_id=org.id, user_id=creator.user_id, role="admin"))
    await _seated(session)
    return org


async def _seated(session: AsyncSession) -> None:
    try:
        await session.flush()
    except IntegrityError:  # a concurrent request seated this user first (one seat per user)
        raise Conflict("you already belong to an organization") from None
    await changed(session, "principal")


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
        .where(Membership.org_id == org_id, Membership.role != RETIRED)
        .order_by(Membership.id)
    )
    members = [
        MemberView(m.user_id, email, m.role, from_hundredths(m.allocation), from_hundredths(m.used))
        for m, email in rows
    ]
    allocated = sum((m.allocation for m in members), Decimal("0.00"))
    return OrgView(org.id, org.name, balance, allocated, members)


# -- invitations ---------------------------------------------------------------------------------------------------
async def invite(
    session: AsyncSession, *, org_id: int, email: str, allocation: Decimal, role: str, inviter: Principal
) -> InvitationView:
    """Invite ``email`` (pending again, with these terms, if it was invited before). Looks up no user: the answer
    and its timing are the same whoever has the email."""
    email = normalize_email(email)
    values = {
        "role": role,
        "allocation": to_hundredths(allocation),
        "invited_by": inviter.user_id,
        "status": "pending",
        "created_at": utcnow(),
        "responded_at": None,
    }
    invitation = await session.scalar(
        select(OrgInvitation).where(OrgInvitation.org_id == org_id, OrgInvitation.email == email)
    )
    if invitation is None:
        try:
            async with session.begin_nested():
                invitation = OrgInvitation(org_id=org_id, email=email, **values)
                session.add(invitation)
        except IntegrityError:  # invited concurrently: take that row
            invitation = await session.scalar(
                select(OrgInvitation).where(OrgInvitation.org_id == org_id, OrgInvitation.email == email)
            )
            assert invitation is not None
    for key, value in values.items():
        setattr(invitation, key, value)
    await session.flush()
    return await _invitation_view(session, invitation)


async def _invitation_view(session: AsyncSession, invitation: OrgInvitation) -> InvitationView:
    org_name = await session.scalar(select(Org.name).where(Org.id == invitation.org_id))
    inviter = (
        await session.scalar(select(User.email).where(User.id == invitation.invited_by))
        if invitation.invited_by is not None
        else None
    )
    return InvitationView(
        id=invitation.id,
        org_id=invitation.org_id,
        org_name=org_name or "",
        email=invitation.email,
        role=invitation.role,
        allocation=from_hundredths(invitation.allocation),
        status=cast(InvitationStatus, invitation.status),
        invited_by=inviter,
        created_at=invitation.created_at,
    )


async def org_invitations(session: AsyncSession, org_id: int) -> list[InvitationView]:
    rows = await session.scalars(select(OrgInvitation).where(OrgInvitation.org_id == org_id).order_by(OrgInvitation.id))
    return [await _invitation_view(session, i) for i in rows]


async def revoke(session: AsyncSession, *, org_id: int, invitation_id: int) -> None:
    invitation = await session.scalar(
        select(OrgInvitation).where(OrgInvitation.id == invitation_id, OrgInvitation.org_id == org_id)
    )
    if invitation is None:
        raise NotFound(f"organization {org_id} has no invitation {invitation_id}")
    if invitation.status != "pending":
        raise Conflict(f"invitation {invitation_id} is {invitation.status}, not pending")
    invitation.status, invitation.responded_at = "revoked", utcnow()
    await session.flush()


async def invitations_for(session: AsyncSession, principal: Principal) -> list[InvitationView]:
    """The caller's pending invitations, oldest first."""
    rows = await session.scalars(
        select(OrgInvitation)
        .where(OrgInvitation.email == normalize_email(principal.email), OrgInvitation.status == "pending")
        .order_by(OrgInvitation.id)
    )
    return [await _invitation_view(session, i) for i in rows]


async def _answer(session: AsyncSession, *, invitation_id: int, principal: Principal, status: str) -> OrgInvitation:
    """Mark the caller's pending invitation ``status`` (in this transaction: a refusal after this rolls it back);
    404 for one that is not theirs or not pending, whether or not it exists."""
    invitation = await session.scalar(
        update(OrgInvitation)
        .where(
            OrgInvitation.id == invitation_id,
            OrgInvitation.email == normalize_email(principal.email),
            OrgInvitation.status == "pending",
        )
        .values(status=status, responded_at=utcnow())
        .returning(OrgInvitation)
        .execution_options(synchronize_session=False)
    )
    if invitation is None:
        raise NotFound(f"you have no pending invitation {invitation_id}")
    return invitation


async def accept(session: AsyncSession, *, invitation_id: int, principal: Principal) -> int:
    """Take the seat an invitation offers; returns the org's id. 409 if the caller already belongs to an org."""
    invitation = await _answer(session, invitation_id=invitation_id, principal=principal, status="accepted")
    current = await _membership_of(session, principal.user_id)
    if current is not None:
        which = "this organization" if current.org_id == invitation.org_id else "an organization"
        raise Conflict(f"you already belong to {which}; leave it before accepting", org_id=current.org_id)
    await _clear_retired_seat(session, principal.user_id)
    session.add(
        Membership(
            org_id=invitation.org_id,
            user_id=principal.user_id,
            role=invitation.role,
            allocation=invitation.allocation,
        )
    )
    await _seated(session)
    return invitation.org_id


async def decline(session: AsyncSession, *, invitation_id: int, principal: Principal) -> None:
    await _answer(session, invitation_id=invitation_id, principal=principal, status="declined")


# -- seats ---------------------------------------------------------------------------------------------------------
async def _member(session: AsyncSession, *, org_id: int, user_id: int) -> Membership:
    membership = await _membership_of(session, user_id)
    if membership is None or membership.org_id != org_id:
        raise NotFound(f"user {user_id} is not a member of organization {org_id}")
    return membership


async def _keep_an_admin(session: AsyncSession, seat: Membership) -> None:
    """409 if ``seat`` is its org's last admin and the org has other members (who would be left without one)."""
    if seat.role != "admin":
        return
    others = (
        await session.execute(
            select(Membership.role).where(
                Membership.org_id == seat.org_id, Membership.id != seat.id, Membership.role != RETIRED
            )
        )
    ).scalars()
    roles = list(others)
    if roles and "admin" not in roles:
        raise Conflict("the organization's last admin cannot step down while it has other members; make one an admin")


async def update_member(
    session: AsyncSession, *, org_id: int, user_id: int, allocation: Decimal, role: str | None = None
) -> Membership:
    """A new allocation (it may go below what was used: no more spending until it is raised again) and role."""
    membership = await _member(session, org_id=org_id, user_id=user_id)
    membership.allocation = to_hundredths(allocation)
    if role is not None and role != membership.role:
        if role != "admin":
            await _keep_an_admin(session, membership)
        membership.role = role
        await changed(session, "principal")
    await session.flush()
    return membership


async def retire_member(session: AsyncSession, *, org_id: int, user_id: int) -> None:
    """End a seat (leaving or removed): 409 while the member has requests in flight; else retire it at once (the
    user's next request is charged to their own account) and leave the deletion to ``delete_retired``."""
    seat = await _lock_seat(session, user_id)  # waits for any hold being placed on it right now
    if seat is None or seat.role == RETIRED or seat.org_id != org_id:
        raise NotFound(f"user {user_id} is not a member of organization {org_id}")
    if await _open_holds(session, seat.id):
        raise Conflict("the member has requests in flight; try again when they finish")
    await _keep_an_admin(session, seat)
    seat.role, seat.allocation = RETIRED, 0
    await session.flush()
    await changed(session, "principal")


async def delete_retired(session: AsyncSession, *, user_id: int) -> bool:
    """Delete the user's retired seat unless a hold still names it; ``True`` if it is gone."""
    seat = await _lock_seat(session, user_id)
    if seat is None or seat.role != RETIRED:
        return seat is None
    if await _open_holds(session, seat.id):
        return False  # deleted when they next join or found an org
    await _delete_seat(session, seat)
    return True


async def end_membership(sessionmaker: async_sessionmaker[AsyncSession], *, org_id: int, user_id: int) -> None:
    """``retire_member``, then after the grace period ``delete_retired`` (each in its own transaction)."""
    async with sessionmaker() as session, session.begin():
        await retire_member(session, org_id=org_id, user_id=user_id)
    await asyncio.sleep(RETIRE_GRACE_SECONDS)
    async with sessionmaker() as session, session.begin():
        await delete_retired(session, user_id=user_id)
