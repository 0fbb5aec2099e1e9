"""In-process caches for what changes slowly (API key → principal, plan, BYOK keys, the credit increment).

A write marks what it changed with ``changed(session, kind, key)`` inside its transaction. When the
transaction commits, every cache of this process drops those entries, and on Postgres a ``NOTIFY`` carries
the change to every other worker, whose listener drops them too. Entries also expire after
``CREDITGATE_CACHE_SECONDS`` (default 5 s): the bound on staleness if a notification is ever missed
(or between processes on SQLite, which has no NOTIFY).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

V = TypeVar("V")
Kind = Literal["principal", "plan", "byok", "increment"]
KINDS: tuple[Kind, ...] = ("principal", "plan", "byok", "increment")
CHANNEL = "creditgate_cache"
ALL = "*"
_PENDING = "creditgate_cache_changes"


class TTLCache(Generic[V]):
    """A dict whose entries live ``ttl`` seconds, keyed by the same strings change notifications carry."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._data: dict[str, tuple[float, V]] = {}
        self.generation = 0  # counts drops: read it before a lookup, pass it to ``put`` as ``since``

    def get(self, key: str) -> V | None:
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, value: V, *, since: int | None = None) -> V:
        """Cache ``value`` (and return it); not if anything was dropped since ``generation`` was ``since``: the
        value was read before that change committed, and caching it would undo the drop for ``ttl`` seconds."""
        if self.ttl > 0 and (since is None or since == self.generation):
            self._data[key] = (time.monotonic() + self.ttl, value)
        return value

    def drop(self, key: str) -> None:
        self.generation += 1
        if key == ALL:
            self._data.clear()
        else:
            self._data.pop(key, None)


class Caches:
    """One app's caches, by kind; dropped together with every other app's in this process on a change."""

    def __init__(self, ttl: float) -> None:
        self.principal: TTLCache[Any] = TTLCache(ttl)
        self.plan: TTLCache[str] = TTLCache(ttl)
        self.byok: TTLCache[dict[str, str]] = TTLCache(ttl)
        self.increment: TTLCache[Any] = TTLCache(ttl)
        _live.add(self)

    def drop(self, kind: str, key: str) -> None:
        cache = getattr(self, kind, None)
        if isinstance(cache, TTLCache):
            cache.drop(key)


_live: weakref.WeakSet[Caches] = weakref.WeakSet()


def drop_everywhere(kind: str, key: str) -> None:
    """Drop ``kind``/``key`` from every cache of this process."""
    for caches in list(_live):
        caches.drop(kind, key)


async def changed(session: AsyncSession, kind: Kind, key: object = ALL) -> None:
    """Mark a change in this transaction: caches here drop it now (reads later in this transaction see it) and
    again on commit (a concurrent request may have cached the old value meanwhile); other workers are notified."""
    payload = f"{kind}:{key}"
    drop_everywhere(kind, str(key))
    pending: set[str] = session.info.setdefault(_PENDING, set())
    if not pending:
        event.listen(session.sync_session, "after_commit", _after_commit, once=True)
        event.listen(session.sync_session, "after_rollback", _forget, once=True)
    pending.add(payload)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})


def _set(flag: asyncio.Event, *_: object) -> None:
    flag.set()


def _after_commit(session: Session) -> None:
    for payload in session.info.pop(_PENDING, set()):
        kind, _, key = payload.partition(":")
        drop_everywhere(kind, key)


def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)


async def listen(url: str, *, on_error: Callable[[BaseException], None] | None = None) -> None:
    """Drop what other workers change (Postgres ``LISTEN``), reconnecting until cancelled."""
    import asyncpg

    from creditgate.db.engine import libpq_url

    def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key = payload.partition(":")
        drop_everywhere(kind, key)

    while True:
        conn = None
        try:
            conn = await asyncpg.connect(libpq_url(url))
            lost = asyncio.Event()
            conn.add_termination_listener(functools.partial(_set, lost))
            await conn.add_listener(CHANNEL, received)
            for kind in KINDS:  # whatever changed while we were not listening
                drop_everywhere(kind, ALL)
            await lost.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database restarted: flush and reconnect
            log.warning("cache invalidation listener lost its connection; reconnecting", exc_info=True)
            if on_error is not None:
                on_error(exc)
            await asyncio.sleep(1)
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()
