"""``GET /metrics`` on the gateway's port, or on a port of its own (``CREDITGATE_METRICS_PORT``)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from creditgate.auth.deps import RuntimeDep
from creditgate.db.models import Hold
from creditgate.http_guard import GuardedRoute
from creditgate.money import from_hundredths
from creditgate.observability import metrics
from creditgate.runtime import Runtime

router = APIRouter(route_class=GuardedRoute, tags=["system"])
log = logging.getLogger(__name__)


async def scrape(rt: Runtime) -> bytes:
    """Every worker's samples plus the open holds, read from the database now (omitted if it is down)."""
    families = []
    try:
        async with rt.sessionmaker() as session:
            count, units = (
                await session.execute(
                    select(func.count(), func.coalesce(func.sum(Hold.amount), 0)).where(Hold.status == "open")
                )
            ).one()
        families = metrics.open_holds_families(int(count), from_hundredths(int(units)) if units else Decimal(0))
    except Exception:
        log.warning("metrics: could not read open holds", exc_info=True)
    return metrics.render(families)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(rt: RuntimeDep) -> Response:
    """Prometheus text exposition (not behind the API key; move it with CREDITGATE_METRICS_PORT)."""
    return Response(await scrape(rt), media_type=CONTENT_TYPE_LATEST)


async def serve_on_port(rt: Runtime, *, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP listener answering ``GET /metrics`` on ``port``; every worker binds it (SO_REUSEPORT)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)).strip():
                pass  # headers: not needed
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                status, body, kind = "200 OK", await scrape(rt), CONTENT_TYPE_LATEST
            else:
                status, body, kind = "404 Not Found", b"GET /metrics\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_port=True)
