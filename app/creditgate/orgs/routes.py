"""POST /orgs, GET /orgs/{id}, POST/PUT/DELETE /orgs/{id}/members."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, field_validator

from creditgate.auth.deps import PrincipalDep, RuntimeDep
from creditgate.db.models import MAX_ID
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.money import credits
from creditgate.orgs import service
from creditgate.users.schemas import Credits

# Ids are 32-bit in the database: anything larger is a 422, not an overflow deep in the driver.
OrgId = Annotated[int, Path(ge=1, le=MAX_ID)]
UserId = Annotated[int, Path(ge=1, le=MAX_ID)]

router = APIRouter(prefix="/orgs", tags=["orgs"], responses=ERROR_RESPONSES(401, 403, 404))


class OrgCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Allocation(BaseModel):
    allocation: Decimal = Field(ge=0, le=Decimal("1e12"), description="credits this member may spend")

    @field_validator("allocation")
    @classmethod
    def _cents(cls, value: Decimal) -> Decimal:
        return credits(value)


class MemberAdd(Allocation):
    email: str = Field(min_length=3, max_length=320)
    role: Literal["admin", "member"] = "member"


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


@router.post("", response_model=OrgOut, status_code=201, responses=ERROR_RESPONSES(409, 422))
async def create_org(body: OrgCreate, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Create an organization; you become its admin."""
    async with rt.sessionmaker() as session, session.begin():
        org = await service.create(session, name=body.name, creator=principal)
        return _out(await service.view(session, org.id))


@router.get("/{org_id}", response_model=OrgOut, responses=ERROR_RESPONSES(422))
async def get_org(org_id: OrgId, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Balance, total allocated, and each member's allocation and usage."""
    async with rt.sessionmaker() as session:
        await service.require_role(session, org_id=org_id, principal=principal, admin=False)
        return _out(await service.view(session, org_id))


@router.post("/{org_id}/members", response_model=OrgOut, status_code=201, responses=ERROR_RESPONSES(409, 422))
async def add_member(org_id: OrgId, body: MemberAdd, principal: PrincipalDep, rt: RuntimeDep) -> OrgOut:
    """Add an existing user with an allocation (org admins only)."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        await service.add_member(session, org_id=org_id, email=body.email, allocation=body.allocation, role=body.role)
        return _out(await service.view(session, org_id))


@router.put("/{org_id}/members/{user_id}", response_model=OrgOut, responses=ERROR_RESPONSES(422))
async def set_allocation(
    org_id: OrgId, user_id: UserId, body: Allocation, principal: PrincipalDep, rt: RuntimeDep
) -> OrgOut:
    """Change a member's allocation (org admins only)."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        await service.set_allocation(session, org_id=org_id, user_id=user_id, allocation=body.allocation)
        return _out(await service.view(session, org_id))


@router.delete("/{org_id}/members/{user_id}", status_code=204, responses=ERROR_RESPONSES(409, 422))
async def remove_member(org_id: OrgId, user_id: UserId, principal: PrincipalDep, rt: RuntimeDep) -> Response:
    """Remove a member; they go back to spending their own credits (org admins only)."""
    async with rt.sessionmaker() as session, session.begin():
        await service.require_role(session, org_id=org_id, principal=principal, admin=True)
        await service.remove_member(session, org_id=org_id, user_id=user_id)
    return Response(status_code=204)
