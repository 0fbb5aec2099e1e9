"""The money steps of a request as one round trip each, on Postgres: ``creditgate_hold`` and ``creditgate_close``
(migration 0006) called through asyncpg prepared statements, no ORM in between.

Same rows, same order of locks (membership, account) as ``ledger.service``; the rare paths (a refusal that
needs its reasons, a hold the sweeper expired first) are left to ``ledger.service`` by returning ``None``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from creditgate.db.engine import libpq_url
from creditgate.money import to_hundredths

HOLD = "SELECT hold_id, balance FROM creditgate_hold($1, $2, $3, $4, $5, $6)"
CLOSE = "SELECT charged, balance FROM creditgate_close($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


@dataclass(frozen=True, slots=True)
class Usage:
    """The usage record written with a settle (one per request)."""

    request_id: str
    model: str
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    outcome: str
    byok: bool

    def row(self, *, user_id: int, credits: Decimal) -> dict[str, Any]:
        """The ``usage_records`` row, for the ORM path's INSERT (``creditgate_close`` writes the same columns)."""
        return {**asdict(self), "user_id": user_id, "credits": to_hundredths(credits)}  # created_at: the default


class PostgresLedger:
    """An asyncpg pool of its own (the ORM's pool checks out, pings and begins: ~1 ms per step here)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, *, size: int) -> PostgresLedger:
        import asyncpg

        return cls(await asyncpg.create_pool(libpq_url(url), min_size=1, max_size=size))

    async def close_pool(self) -> None:
        await self._pool.close()

    async def hold(
        self,
        *,
        account_id: int,
        units: int,
        request_id: str,
        ttl_seconds: float,
        membership_id: int | None,
        user_id: int | None,
    ) -> tuple[int, int] | None:
        """``(hold id, balance after)``, or ``None`` if the balance or the allocation is short (nothing changed)."""
        row = await self._pool.fetchrow(HOLD, account_id, units, request_id, ttl_seconds, membership_id, user_id)
        return None if row is None or row["hold_id"] is None else (row["hold_id"], row["balance"])

    async def close(
        self,
        *,
        hold_id: int,
        status: str,
        charge: int,
        description: str | None,
        user_id: int | None,
        usage: Usage | None,
    ) -> tuple[int, int] | None:
        """``(charged, balance after)`` with the usage record written, or ``None`` if the hold was not open."""
        u = usage
        row = await self._pool.fetchrow(
            CLOSE,
            hold_id,
            status,
            charge,
            description,
            user_id,
            u and u.request_id,
            u and u.model,
            u and u.provider,
            u and u.prompt_tokens,
            u and u.completion_tokens,
            u and u.latency_ms,
            u and u.outcome,
            u and u.byok,
        )
        return None if row is None or row["charged"] is None else (row["charged"], row["balance"])
