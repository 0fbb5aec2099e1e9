"""``GET /user/notifications``: what the gateway told (or will tell) the caller, newest first."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from creditgate.auth.deps import PrincipalDep, SessionDep
from creditgate.db.models import Notification
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute

router = APIRouter(route_class=GuardedRoute, prefix="/user", tags=["user"], responses=ERROR_RESPONSES(401))


class NotificationOut(BaseModel):
    id: str
    type: str
    data: dict[str, Any]
    created_at: datetime
    delivered: bool
    attempts: int


class NotificationList(BaseModel):
    data: list[NotificationOut]


@router.get("/notifications", response_model=NotificationList, responses=ERROR_RESPONSES(422))
async def notifications(
    principal: PrincipalDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> NotificationList:
    """The caller's notifications (low balance, payments, refunds, quota), newest first."""
    rows = await session.scalars(
        select(Notification)
        .where(Notification.user_id == principal.user_id)
        .order_by(Notification.created_at.desc(), Notification.id)
        .limit(limit)
    )
    return NotificationList(
        data=[
            NotificationOut(
                id=n.id,
                type=n.type,
                data=json.loads(n.payload),
                created_at=n.created_at,
                delivered=n.delivered_at is not None,
                attempts=n.attempts,
            )
            for n in rows
        ]
    )
