"""Orgs: POST /orgs, GET /orgs/{id}, invitations (/orgs/{id}/invitations, /user/invitations), members.

Joining an org is an invitation its addressee accepts: nothing changes for them until then.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, field_validator

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.db.models import MAX_ID
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.money import credits
from creditgate.orgs import service
from creditgate.users.schemas import Credits

# Ids are 32-bit in the database: anything larger is a 422, not an overflow deep in the driver.
OrgId = Annotated[int, Path(ge=1, le=MAX_ID)]
UserId = Annotated[int, Path(ge=1, le=MAX_ID)]
MemberRef = Annotated[
    Annotated[int, Field(ge=1, le=MAX_ID)] | Literal["me"], Path(description="a member's user id, or `me`")
]
InvitationId = Annotated[int, Path(ge=1, le=MAX_ID)]
Role = Literal["admin", "member"]

orgs = APIRouter(route_class=GuardedRoute, prefix="/orgs", tags=["orgs"], responses=ERROR_RESPONSES(401, 403, 404))
invitations = APIRouter(
    route_class=GuardedRoute, prefix="/user/invitations", tags=["orgs"], responses=ERROR_RESPONSES(401)
)


class OrgCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Allocation(BaseModel):
    allocation: Decimal = Field(ge=0, le=Decimal("1e12"), description="credits this member may spend")

    @field_validator("allocation")
    @classmethod
    def _cents(cls, value: Decimal) -> Decimal:
        return credits(value)


class MemberUpdate(Allocation):
    role: Role | None = Field(default=None, description="make the member an admin, or a member again")


class InvitationCreate(Allocation):
    email: str = Field(min_length=3, max_length=320, description="whoever signs in with this email may accept")
    role: Role = "member"


class InvitationOut(BaseModel):
    """What the inviter sees: the same for every email, whether or not someone has an account with it."""

    id: int
    org_id: int
    email: str
    role: str
    allocation: Credits
    status: service.InvitationStatus
    created_at: datetime


class InvitationList(BaseModel):
    data: list[InvitationOut]


class PendingInvitation(BaseModel):
    """An invitation to you: accepting it makes your requests spend the org's credits within ``allocation``."""

    id: int
    org_id: int
    org_name: str
    role: str
    allocation: Credits
    invited_by: str | None = Field(description="the inviting admin's email")
    created_at: datetime


class PendingInvitationList(BaseModel):
    data: list[PendingInvitation]


class MemberOut(BaseModel):
    user_id: int
    email: str
    role: str
    allocation: Credits
    used: Credits


class OrgOut(BaseModel):
    id: int
    name: str
    balance: Credits
    allocated: Credits
    members: list[MemberOut]


def _out(view: service.OrgView) -> OrgOut:
    return OrgOut(
        id=view.id,
        name=view.name,
        balance=view.balance,
        allocated=view.allocated,
        members=[
            MemberOut(user_id=m.user_id, email=m.email, role=m.role, allocation=m.allocation, used=m.used)
            for m in view.members
        ],
    )


def _invitation(i: service.InvitationView) -> InvitationOut:
    return InvitationOut(
        id=i.id,
        org_id=i.org_id,
        email=i.email,
        role=i.role,
        allocation=i.allocation,
        status=i.status,
        created_at=i.created_at,
    )


@orgs.post("", response_model=OrgOut, status_code=201, responses=ERROR_RESPONSES(409, 422))
async def create_org(body: OrgCreate, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Create an organization; you become its admin."""
    async with rt.sessionmaker() as session, session.begin():
        org = await service.create(session, name=body.name, creator=principal)
        return _out(await service.view(session, org.id))


@orgs.get("/{org_id}", response_model=OrgOut, responses=ERROR_RESPONSES(422))
async def get_org(org_id: OrgId, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Balance, total allocated, and each member's allocation and usage."""
    async with rt.sessionmaker() as session:
        await service.require_role(session, org_id=org_id, principal=principal, admin=False)
        return _out(await service.view(session, org_id))


@orgs.post("/{org_id}/invitations", response_model=InvitationOut, status_code=201, responses=ERROR_RESPONSES(422))
async def invite(org_id: OrgId, body: InvitationCreate, principal: PrincipalDep, rt: RuntimeDep) -> InvitationOut:
    """Invite an email to join with an allocation (org admins only). Nothing changes for its owner until they
    accept (GET /user/invitations). Inviting the same email again updates the invitation and makes it pending."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        return _invitation(
            await service.invite(
                session, org_id=org_id, email=body.email, allocation=body.allocation, role=body.role, inviter=principal
            )
        )


@orgs.get("/{org_id}/invitations", response_model=InvitationList, responses=ERROR_RESPONSES(422))
async def list_invitations(org_id: OrgId, principal: PrincipalDep, rt: RuntimeDep) -> InvitationList:
    """The org's invitations and their status (org admins only)."""
    async with rt.sessionmaker() as session:
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        return InvitationList(data=[_invitation(i) for i in await service.org_invitations(session, org_id)])


@orgs.delete("/{org_id}/invitations/{invitation_id}", status_code=204, responses=ERROR_RESPONSES(409, 422))
async def revoke_invitation(
    org_id: OrgId, invitation_id: InvitationId, principal: PrincipalDep, rt: RuntimeDep
) -> Response:
    """Withdraw a pending invitation (org admins only)."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        await service.revoke(session, org_id=org_id, invitation_id=invitation_id)
    return Response(status_code=204)


@orgs.put("/{org_id}/members/{user_id}", response_model=OrgOut, responses=ERROR_RESPONSES(409, 422))
async def update_member(
    org_id: OrgId, user_id: UserId, body: MemberUpdate, principal: PrincipalDep, rt: RuntimeDep
) -> OrgOut:
    """Change a member's allocation, and optionally their role (org admins only)."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        await service.update_member(session, org_id=org_id, user_id=user_id, allocation=body.allocation, role=body.role)
        return _out(await service.view(session, org_id))


@orgs.delete("/{org_id}/members/{user_id}", status_code=204, responses=ERROR_RESPONSES(409, 422))
async def remove_member(org_id: OrgId, user_id: MemberRef, principal: PrincipalDep, rt: RuntimeDep) -> Response:
    """Remove a member (org admins only), or leave yourself (``me``): the next request of the one who left spends
    their own credits. 409 while they have requests in flight (try again when those finish), or for the org's
    last admin while others remain (make one of them an admin first)."""
    async with rt.sessionmaker() as session:
        await service.require_role(session, org_id=org_id, principal=principal, admin=user_id != "me")
    leaving = principal.user_id if user_id == "me" else user_id
    await service.end_membership(rt.sessionmaker, org_id=org_id, user_id=leaving)
    return Response(status_code=204)


@invitations.get("", response_model=PendingInvitationList)
async def my_invitations(principal: PrincipalDep, rt: RuntimeDep) -> PendingInvitationList:
    """Invitations to you (to your email) awaiting your answer."""
    async with rt.sessionmaker() as session:
        pending = await service.invitations_for(session, principal)
    return PendingInvitationList(
        data=[
            PendingInvitation(
                id=i.id,
                org_id=i.org_id,
                org_name=i.org_name,
                role=i.role,
                allocation=i.allocation,
                invited_by=i.invited_by,
                created_at=i.created_at,
            )
            for i in pending
        ]
    )


@invitations.post("/{invitation_id}/accept", response_model=OrgOut, responses=ERROR_RESPONSES(404, 409, 422))
async def accept(invitation_id: InvitationId, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Join the org: from your next request on, it pays within your allocation. 409 if you already belong to an
    organization (leave it first)."""
    async with rt.sessionmaker() as session, session.begin():
        org_id = await service.accept(session, invitation_id=invitation_id, principal=principal)
        return _out(await service.view(session, org_id))


@invitations.post("/{invitation_id}/decline", status_code=204, responses=ERROR_RESPONSES(404, 422))
async def decline(invitation_id: InvitationId, principal: PrincipalDep, rt: RuntimeDep) -> Response:
    """Turn the invitation down."""
    async with rt.sessionmaker() as session, session.begin():
        await service.decline(session, invitation_id=invitation_id, principal=principal)
    return Response(status_code=204)


router = APIRouter(route_class=GuardedRoute)
router.include_router(orgs)
router.include_router(invitations)
