"""Hold before the provider call, settle or release after — once, even if the client goes away.

``Meter.open`` holds the worst case (402 with what is affordable if it cannot); ``settle`` charges
the actual cost and writes the usage record in the same transaction — a cost above the hold (the upstream
served more than the estimate bounded) takes the rest from the balance, never below zero, and the usage record
keeps what even that could not cover (``unrecovered``, also a metric);
``release`` gives the hold back. Both run shielded from cancellation, so a client disconnect in
the middle of a stream still settles. A BYOK request holds nothing and is charged 0, but its
usage is recorded all the same.

On Postgres the hold commits asynchronously (``CREDITGATE_HOLD_ASYNC_COMMIT``): a crash before the settle loses it.
The settle then finds no hold of its request (another request's hold may carry the lost id: every step names the
hold by id and request) and charges the full price from what the balance has left (``ledger.settle_lost_hold``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import anyio
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth.service import Principal
from creditgate.byok.service import keys_for
from creditgate.catalog import pricing
from creditgate.catalog.service import ModelConfig
from creditgate.db.errors import unreachable
from creditgate.db.models import Hold, UsageRecord, utcnow
from creditgate.errors import InsufficientCredits
from creditgate.ledger import service as ledger
from creditgate.ledger.fast import Usage
from creditgate.money import from_hundredths, to_hundredths
from creditgate.notifications.outbox import crossed_below, notify_account
from creditgate.observability import metrics
from creditgate.observability.context import note_model
from creditgate.quotas.service import Admission
from creditgate.runtime import Runtime

log = logging.getLogger(__name__)
ZERO = Decimal("0.00")


class _OnDemand:
    """An ORM session built on first use (``session()``), committed by ``commit()`` if it began a transaction, and
    closed on the way out."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None

    def session(self) -> AsyncSession:
        if self._session is None:
            self._session = self._sessionmaker()
        return self._session

    async def commit(self) -> None:
        if self._session is not None and self._session.in_transaction():
            await self._session.commit()

    async def __aenter__(self) -> _OnDemand:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class Meter:
    rt: Runtime
    principal: Principal
    model: ModelConfig
    increment: Decimal
    prompt_estimate: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    user_keys: dict[str, str] = field(default_factory=dict)  # the caller's own provider keys (BYOK)
    hold_id: int | None = None
    held: Decimal = ZERO
    closed: bool = False
    admission: Admission | None = None  # the quota call this request counted (rate-limit headers)

    @property
    def byok(self) -> bool:
        """The caller pays the provider with their own key: 0 credits, usage still recorded."""
        return bool(self.user_keys)

    def price(self, *, prompt_tokens: int, completion_tokens: int, images: int = 0) -> Decimal:
        """What these tokens (or images) cost in credits, rounded up to the increment."""
        if self.byok:
            return ZERO
        return pricing.credits_for(
            self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            images=images,
            margin=self.rt.settings.margin,
            credit_value_usd=self.rt.settings.credit_value_usd,
            increment=self.increment,
        )

    @classmethod
    async def open(
        cls,
        rt: Runtime,
        principal: Principal,
        model: ModelConfig,
        *,
        prompt_estimate: int,
        max_tokens: int = 0,
        images: int = 0,
    ) -> Meter:
        """In one transaction: load the caller's own provider keys (BYOK), count the call against the
        plan's quota (429 past it) and hold the most this request can cost (402 if the balance is short;
        nothing is held for BYOK). A refused hold gives the quota call back."""
        note_model(model.id)
        admission: Admission | None = None
        try:
            # A session built only on a cache miss, a notice or the ORM hold: with warm caches and the fast ledger
            # a request builds none (an empty AsyncSession costs ~36 µs of CPU, a begin() ~3 % of a request).
            async with _OnDemand(rt.sessionmaker) as db:
                user_keys = rt.caches.byok.get(str(principal.user_id))
                if user_keys is None:
                    all_keys = await keys_for(db.session(), user_id=principal.user_id, settings=rt.settings)
                    user_keys = rt.caches.byok.put(str(principal.user_id), all_keys)
                user_keys = {p.provider: user_keys[p.provider] for p in model.providers if p.provider in user_keys}
                admission = await rt.quotas.admit(db.session, principal.quota_subject)
                crossed = admission.crossed() if admission is not None else None
                if admission is not None and crossed is not None:
                    await notify_account(
                        db.session(),
                        account_id=principal.account_id,
                        type=crossed,
                        data={"subject": principal.quota_subject, "calls": admission.count, "limit": admission.limit},
                    )
                increment = rt.caches.increment.get("")
                if increment is None:
                    default = rt.settings.default_credit_increment
                    current = await pricing.current_increment(db.session(), default=default)
                    increment = rt.caches.increment.put("", current)
                meter = cls(rt, principal, model, increment, prompt_estimate, user_keys=user_keys, admission=admission)
                if not meter.byok:
                    worst = meter.price(prompt_tokens=prompt_estimate, completion_tokens=max_tokens, images=images)
                    # One round trip on Postgres, unless a notification must commit with the hold.
                    if rt.fast_ledger is not None and crossed is None:
                        meter.hold_id = await meter._fast_hold(worst)
                    if meter.hold_id is None:
                        meter.hold_id = await meter._hold(db.session(), worst, images=images)
                    meter.held = worst
                await db.commit()
            return meter
        except BaseException:
            await rt.quotas.give_back(admission)  # refused for credits: the call does not count
            raise

    async def _fast_hold(self, worst: Decimal) -> int | None:
        """The hold through ``creditgate_hold``; ``None`` when refused (the ORM path then says why)."""
        assert self.rt.fast_ledger is not None
        held = await self.rt.fast_ledger.hold(
            account_id=self.principal.account_id,
            units=to_hundredths(worst),
            request_id=self.request_id,
            ttl_seconds=float(self.rt.settings.hold_ttl_seconds),
            membership_id=self.principal.membership_id,
            user_id=self.principal.user_id,
        )
        if held is None:
            return None
        metrics.committed(held=worst)
        return held[0]

    async def _hold(self, session: AsyncSession, worst: Decimal, *, images: int) -> int:
        rt, principal = self.rt, self.principal
        try:
            return await ledger.place_hold(
                session,
                account_id=principal.account_id,
                amount=worst,
                request_id=self.request_id,
                ttl=timedelta(seconds=rt.settings.hold_ttl_seconds),
                membership_id=principal.membership_id,
                user_id=principal.user_id,
            )
        except InsufficientCredits as exc:
            if not images and exc.extra.get("reason") in {"insufficient_credits", "org_insufficient_credits"}:
                exc.extra["max_affordable_tokens"] = pricing.max_affordable_tokens(
                    self.model,
                    balance=Decimal(exc.extra["balance"]),
                    prompt_tokens=self.prompt_estimate,
                    margin=rt.settings.margin,
                    credit_value_usd=rt.settings.credit_value_usd,
                    increment=self.increment,
                )
            raise

    async def settle(
        self,
        *,
        charge: Decimal,
        provider: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        outcome: str = "ok",
    ) -> Decimal:
        """Charge ``charge`` (beyond the hold only what the balance has left), release the rest, record the usage.
        Returns what was charged.

        The upstream has answered, so a settle the database cannot take now (Postgres restarting) is retried with
        backoff for up to half the hold's TTL: given up, the sweeper would release the hold and the answer go free.
        An attempt that failed that way may still have committed (the reply was lost with the connection), so each
        retry first looks whether the hold is already settled, and then returns what that attempt charged.
        """
        if self.closed:
            return ZERO
        self.closed = True
        delay, deadline, ambiguous = 0.1, time.monotonic() + self.rt.settings.hold_ttl_seconds / 2, False
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    if ambiguous and (committed := await self._committed_charge()) is not None:
                        return committed
                    return await self._settle(
                        charge=charge,
                        provider=provider,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        latency_ms=latency_ms,
                        outcome=outcome,
                    )
                except Exception as exc:
                    if not unreachable(exc) or time.monotonic() > deadline:
                        raise
                    log.warning("settling hold %s: database unreachable (%s); retrying", self.hold_id, exc)
                    ambiguous = True
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable: the shielded loop returns or raises")  # pragma: no cover

    async def renew(self) -> bool:
        """Push the open hold's expiry a whole TTL past now: a stream keeps its hold for as long as it runs, and
        the sweeper only takes the hold of a request nobody is serving any more (its worker died). ``False`` if
        the hold is no longer open (then the settle charges the full price from the balance)."""
        if self.hold_id is None or self.closed:
            return True
        ttl = timedelta(seconds=self.rt.settings.hold_ttl_seconds)
        async with self.rt.sessionmaker.begin() as session:
            renewed = await session.scalar(
                update(Hold)
                .where(Hold.id == self.hold_id, Hold.request_id == self.request_id, Hold.status == "open")
                .values(expires_at=utcnow() + ttl)
                .returning(Hold.id)
            )
        return renewed is not None

    async def _committed_charge(self) -> Decimal | None:
        """What an earlier settle attempt charged if it committed: the request's hold is settled, or (the sweeper was
        first) expired with a late charge; ``None`` if no attempt committed (or there is no hold: none placed, or
        lost in a crash). By request, not by id: a lost hold's id may be another request's now."""
        if self.hold_id is None:
            return None
        async with self.rt.sessionmaker() as session:
            row = (
                await session.execute(select(Hold.status, Hold.charged).where(Hold.request_id == self.request_id))
            ).one_or_none()
        if row is None:
            return None
        if row.status == "settled" or (row.status == "expired" and row.charged > 0):
            return from_hundredths(row.charged)
        return None

    async def _settle(
        self,
        *,
        charge: Decimal,
        provider: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
        outcome: str,
    ) -> Decimal:
        """One attempt: the one-round-trip close on Postgres, else (or when the hold is not open) the ORM path."""
        if self.rt.fast_ledger is not None and self.hold_id is not None:
            closed = await self.rt.fast_ledger.close(
                hold_id=self.hold_id,
                request_id=self.request_id,
                status="settled",
                charge=to_hundredths(charge),
                description=f"{self.model.id} via {provider}",
                user_id=self.principal.user_id,
                usage=self._usage(provider, prompt_tokens, completion_tokens, latency_ms, outcome),
            )
            if closed is not None:
                charged, balance = from_hundredths(closed[0]), from_hundredths(closed[1])
                metrics.committed(charged=charged, released=max(self.held - charged, ZERO))
                metrics.unrecovered(model=self.model.id, credits=charge - charged)
                await self._notify_low_balance(before=balance + charged, after=balance)
                return charged
        async with self.rt.sessionmaker() as session, session.begin():
            charged = ZERO
            if self.hold_id is not None:
                description = f"{self.model.id} via {provider}"
                try:
                    result = await ledger.settle_hold(
                        session,
                        hold_id=self.hold_id,
                        request_id=self.request_id,
                        charge=charge,
                        description=description,
                        user_id=self.principal.user_id,
                    )
                except ledger.HoldLost:  # the upstream has answered: paid from what the balance has left
                    log.warning("request %s: its hold %s was lost (a database crash?)", self.request_id, self.hold_id)
                    result = await ledger.settle_lost_hold(
                        session,
                        account_id=self.principal.account_id,
                        membership_id=self.principal.membership_id,
                        request_id=self.request_id,
                        charge=charge,
                        description=description,
                        user_id=self.principal.user_id,
                    )
                charged = result.charged
                threshold = self.rt.settings.notify_low_balance
                if crossed_below(threshold, before=result.balance + charged, after=result.balance):
                    await notify_account(
                        session,
                        account_id=self.principal.account_id,
                        type="low_balance",
                        data={"balance": str(result.balance), "threshold": str(threshold)},
                    )
            await session.execute(
                insert(UsageRecord),
                [
                    self._usage(provider, prompt_tokens, completion_tokens, latency_ms, outcome).row(
                        user_id=self.principal.user_id, credits=charged, unrecovered=max(charge - charged, ZERO)
                    )
                ],
            )
        metrics.unrecovered(model=self.model.id, credits=charge - charged)
        return charged

    async def release(self, *, outcome: str = "failed") -> None:
        """Give the whole hold back (a failed request costs nothing) and record the attempt."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self.rt.fast_ledger is not None and self.hold_id is not None:
                    closed = await self.rt.fast_ledger.close(
                        hold_id=self.hold_id,
                        request_id=self.request_id,
                        status="released",
                        charge=0,
                        description=None,
                        user_id=self.principal.user_id,
                        usage=self._usage(None, 0, 0, 0, outcome),
                    )
                    if closed is not None:
                        metrics.committed(released=self.held)
                        return
                async with self.rt.sessionmaker() as session, session.begin():
                    if self.hold_id is not None:
                        await ledger.release_hold(
                            session, hold_id=self.hold_id, request_id=self.request_id, user_id=self.principal.user_id
                        )
                    usage = self._usage(None, 0, 0, 0, outcome).row(user_id=self.principal.user_id, credits=ZERO)
                    await session.execute(insert(UsageRecord), [usage])
            except Exception:  # the sweeper releases it at expiry
                log.exception("could not release hold %s; the sweeper will", self.hold_id)

    async def _notify_low_balance(self, *, before: Decimal, after: Decimal) -> None:
        """After a one-round-trip settle: the low-balance notice in a short transaction of its own (rare). The
        charge has committed, so a database failing now costs the notice, never the answer."""
        threshold = self.rt.settings.notify_low_balance
        if not crossed_below(threshold, before=before, after=after):
            return
        try:
            async with self.rt.sessionmaker.begin() as session:
                await notify_account(
                    session,
                    account_id=self.principal.account_id,
                    type="low_balance",
                    data={"balance": str(after), "threshold": str(threshold)},
                )
        except Exception:
            log.exception("account %s: the low_balance notice was not written", self.principal.account_id)

    def _usage(self, provider: str | None, prompt: int, completion: int, latency_ms: int, outcome: str) -> Usage:
        """The usage record of this request, as both ledger paths write it."""
        return Usage(self.request_id, self.model.id, provider, prompt, completion, latency_ms, outcome, self.byok)
