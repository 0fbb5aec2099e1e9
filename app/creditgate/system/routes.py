"""GET / and GET /health."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

import creditgate
from creditgate.auth.deps import RuntimeDep
from creditgate.http_guard import GuardedRoute

router = APIRouter(route_class=GuardedRoute, tags=["system"])
log = logging.getLogger(__name__)


class Index(BaseModel):
    name: str
    version: str
    docs: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["connected", "error"]
    redis: Literal["connected", "disabled", "error"]


@router.get("/", response_model=Index)
async def index() -> Index:
    """What this service is."""
    return Index(name="creditgate", version=creditgate.__version__, docs="/docs")


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Database down"}})
async def health(rt: RuntimeDep) -> JSONResponse:
    """Database and Redis connectivity; 503 when the database is unreachable."""
    database: Literal["connected", "error"] = "connected"
    try:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        log.exception("health: database check failed")
        database = "error"
    redis: Literal["connected", "disabled", "error"] = "disabled"
    if rt.redis is not None:
        try:
            await rt.redis.ping()
            redis = "connected"
        except Exception:
            log.exception("health: redis check failed")
            redis = "error"
    ok = database == "connected" and redis != "error"
    body = Health(status="ok" if ok else "degraded", database=database, redis=redis)
    return JSONResponse(body.model_dump(), status_code=200 if database == "connected" else 503)
