"""The money steps of a request on Postgres, each one round trip, and many requests per round trip (group commit).

``creditgate_hold_batch`` and ``creditgate_close_batch`` (migration 0007) place or close the holds of every request
waiting at that moment in one function call, one transaction: each account and allocation row is locked and written
once per batch, so one shared org balance is no per-request bottleneck. Batches form on their own: a request that
arrives while a batch is in flight waits for the next one (no timer; at low load a batch is one request, and the
added wait is at most one batch's round trip). A caller gets its answer only once its batch has committed.

Same rows, same order of locks (holds, memberships, accounts) as ``ledger.service``; the rare paths (a refusal that
needs its reasons, a hold the sweeper expired first or a crash lost) are left to ``ledger.service`` by returning
``None``. A batch of several that fails for a reason other than a lost connection is retried request by request
(``creditgate_hold`` / ``creditgate_close``, migration 0006), so one bad request fails alone.

A close names its hold by id *and* request (migration 0010). With ``async_hold`` a hold commits asynchronously: the
request goes on to the upstream without waiting for the disk, and the settle's durable commit (same WAL, later)
makes the hold durable. A Postgres crash in between loses the hold and may give its id to the next hold, which the
request alone tells apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from creditgate.db.engine import libpq_url
from creditgate.db.errors import unreachable
from creditgate.money import to_hundredths

log = logging.getLogger(__name__)

HOLD = "SELECT hold_id, balance FROM creditgate_hold($1, $2, $3, $4, $5, $6, $7)"
CLOSE = "SELECT charged, balance FROM creditgate_close($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
HOLD_BATCH = "SELECT hold_id, balance FROM creditgate_hold_batch($1, $2, $3, $4, $5, $6, $7)"
CLOSE_BATCH = (
    "SELECT charged, balance FROM creditgate_close_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)
MAX_BATCH = 256  # requests per call: bounds one transaction's locks and one answer's wait
IN_FLIGHT = 2  # batches of one kind at a time: one filling while one commits (both cores of a small machine)

T = TypeVar("T")
R = TypeVar("R")


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

    def row(self, *, user_id: int, credits: Decimal, unrecovered: Decimal = Decimal(0)) -> dict[str, Any]:
        """The ``usage_records`` row, for the ORM path's INSERT (``creditgate_close`` writes the same columns)."""
        return {  # created_at: the default
            **asdict(self),
            "user_id": user_id,
            "credits": to_hundredths(credits),
            "unrecovered": to_hundredths(unrecovered),
        }


@dataclass(frozen=True, slots=True)
class HoldRequest:
    account_id: int
    units: int
    request_id: str
    ttl_seconds: float
    membership_id: int | None
    user_id: int | None


@dataclass(frozen=True, slots=True)
class CloseRequest:
    hold_id: int
    request_id: str  # the hold's request: with the id, what names the hold
    status: str
    charge: int
    description: str | None
    user_id: int | None
    usage: Usage | None

    def args(self) -> tuple[Any, ...]:
        u = self.usage
        return (
            self.hold_id,
            self.request_id,
            self.status,
            self.charge,
            self.description,
            self.user_id,
            u and u.model,
            u and u.provider,
            u and u.prompt_tokens,
            u and u.completion_tokens,
            u and u.latency_ms,
            u and u.outcome,
            u and u.byok,
        )


class Batcher(Generic[T, R]):
    """Requests queue up; up to ``in_flight`` tasks each take what is queued (at most ``max_batch``) and answer it
    with one ``run_batch`` call. If that call fails, the connection is the likely cause when ``unreachable(exc)``
    (every caller gets the error), else each request of a batch of several is tried alone with ``run_one``."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        run_one: Callable[[T], Awaitable[R]],
        *,
        distinct: Callable[[T], object] | None = None,
    ) -> None:
        self._run_batch, self._run_one, self._distinct = run_batch, run_one, distinct
        self._max_batch, self._in_flight = MAX_BATCH, IN_FLIGHT
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # calls made (requests / batches = the mean batch size)
        self.requests = 0
        self.fallbacks = 0  # batches that failed and were retried request by request (each one logged)

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item``; the future has its answer once its batch has committed (await it shielded: cancelling
        it would not take the request back out of a batch already sent)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if len(self._tasks) < self._in_flight:
            task = asyncio.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def drain(self) -> None:
        """Wait until every queued request has its answer (a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        if self._distinct is None:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            return batch
        batch, rest, seen = [], [], set()
        for entry in self._queue:
            key = self._distinct(entry[0])
            if len(batch) < self._max_batch and key not in seen:
                seen.add(key)
                batch.append(entry)
            else:
                rest.append(entry)
        self._queue = rest
        return batch

    async def _work(self) -> None:
        while self._queue:
            batch = self._take()
            items = [item for item, _ in batch]
            self.batches += 1
            self.requests += len(items)
            try:
                results = await self._run_batch(items)
            except Exception as exc:
                if unreachable(exc) or len(batch) == 1:  # a batch of one alone would be the same call again
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                log.warning("a batch of %d failed (%s); each request alone", len(items), exc)
                self.fallbacks += 1
                await asyncio.gather(*(self._one(item, future) for item, future in batch))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _one(self, item: T, future: asyncio.Future[R]) -> None:
        try:
            result = await self._run_one(item)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)


class PostgresLedger:
    """An asyncpg pool of its own (the ORM's pool checks out, pings and begins: ~1 ms per step here)."""

    def __init__(self, pool: Any, *, batch: bool, async_hold: bool = False) -> None:
        self._pool = pool
        self._batch = batch  # False: each request its own call, straight to the pool (no queue)
        self._async_hold = async_hold  # the holds' commits do not wait for the disk
        self.holds: Batcher[HoldRequest, tuple[int, int] | None] = Batcher(self._hold_batch, self._hold_one)
        self.closes: Batcher[CloseRequest, tuple[int, int] | None] = Batcher(
            self._close_batch, self._close_one, distinct=lambda c: c.hold_id
        )

    @classmethod
    async def connect(cls, url: str, *, size: int, batch: bool, async_hold: bool = False) -> PostgresLedger:
        import asyncpg

        pool = await asyncpg.create_pool(libpq_url(url), min_size=1, max_size=size, reset=_keep_session)
        return cls(pool, batch=batch, async_hold=async_hold)

    async def close_pool(self) -> None:
        """Answer what is queued, then close the connections."""
        await self.holds.drain()
        await self.closes.drain()
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
        request = HoldRequest(account_id, units, request_id, ttl_seconds, membership_id, user_id)
        if not self._batch:
            return await self._hold_one(request)
        future = self.holds.submit(request)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the caller is gone: a hold placed for it goes straight back
            future.add_done_callback(lambda done: self._release_orphan(done, request))
            raise

    def _release_orphan(self, done: asyncio.Future[tuple[int, int] | None], request: HoldRequest) -> None:
        if done.cancelled() or done.exception() is not None or (held := done.result()) is None:
            return
        orphan = CloseRequest(held[0], request.request_id, "released", 0, None, request.user_id, None)
        released = self.closes.submit(orphan)
        released.add_done_callback(lambda f: f.cancelled() or f.exception())  # failed: the sweeper releases it

    async def close(
        self,
        *,
        hold_id: int,
        request_id: str,
        status: str,
        charge: int,
        description: str | None,
        user_id: int | None,
        usage: Usage | None,
    ) -> tuple[int, int] | None:
        """``(charged, balance after)`` with the usage record written, or ``None`` if no hold of that id and request
        was open (closed already, expired, or lost in a crash)."""
        close = CloseRequest(hold_id, request_id, status, charge, description, user_id, usage)
        if not self._batch:
            return await self._close_one(close)
        return await asyncio.shield(self.closes.submit(close))  # once sent, it commits or not, caller or no caller

    async def _hold_one(self, r: HoldRequest) -> tuple[int, int] | None:
        row = await self._pool.fetchrow(
            HOLD, r.account_id, r.units, r.request_id, r.ttl_seconds, r.membership_id, r.user_id, self._async_hold
        )
        return _pair(row["hold_id"], row["balance"]) if row is not None else None

    async def _hold_batch(self, batch: list[HoldRequest]) -> list[tuple[int, int] | None]:
        if len(batch) == 1:
            return [await self._hold_one(batch[0])]
        ttl = max(r.ttl_seconds for r in batch)  # one setting for every request of a worker
        rows = await self._pool.fetch(
            HOLD_BATCH,
            [r.account_id for r in batch],
            [r.units for r in batch],
            [r.request_id for r in batch],
            ttl,
            [r.membership_id for r in batch],
            [r.user_id for r in batch],
            self._async_hold,
        )
        return [_pair(row["hold_id"], row["balance"]) for row in rows]

    async def _close_one(self, c: CloseRequest) -> tuple[int, int] | None:
        row = await self._pool.fetchrow(CLOSE, *c.args())
        return _pair(row["charged"], row["balance"]) if row is not None else None

    async def _close_batch(self, batch: list[CloseRequest]) -> list[tuple[int, int] | None]:
        if len(batch) == 1:
            return [await self._close_one(batch[0])]
        columns = list(zip(*(c.args() for c in batch), strict=True))
        rows = await self._pool.fetch(CLOSE_BATCH, *(list(column) for column in columns))
        return [_pair(row["charged"], row["balance"]) for row in rows]


async def _keep_session(connection: Any) -> None:
    """The pool's reset on release, instead of asyncpg's default (``RESET ALL; UNLISTEN *; CLOSE ALL`` and advisory
    unlocks: a second round trip per money step). These connections only call the ledger functions, outside any
    explicit transaction, and leave no session state; asyncpg still rolls back a transaction left open. The default
    reset also failed on a connection the server had just ended *after* the call committed, and raised from the pool
    in place of the call's result (seen in ``nox -s chaos``, postgres-restart: a request answered 500 but charged)."""


def _pair(first: int | None, second: int | None) -> tuple[int, int] | None:
    return None if first is None or second is None else (first, second)
