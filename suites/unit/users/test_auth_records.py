"""app/auth: who a key says you are, for how long, and what a refusal says — service and FastAPI dependency."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from creditgate.auth import service as auth
from creditgate.cache import Caches
from creditgate.db.models import Account, ApiKey, LedgerEntry, Membership, Org, utcnow
from creditgate.errors import Conflict
from creditgate.testing.gateway import TestUser

SM = async_sessionmaker[AsyncSession]


async def test_a_new_user_gets_an_account_and_opening_credits(cg_sessionmaker: SM) -> None:
    async with cg_sessionmaker() as s, s.begin():
        user, account = await auth.create_user(s, email="new@example.test", is_admin=True, credits=Decimal("12.5"))
        plain, plain_account = await auth.create_user(s, email="plain@example.test")
    assert (user.email, user.is_admin, account.user_id) == ("new@example.test", True, user.id)
    assert (plain.is_admin, plain_account.user_id) == (False, plain.id)
    async with cg_sessionmaker() as s:
        entries = [
            (e.account_id, e.type, e.amount, e.description)
            for e in await s.scalars(select(LedgerEntry).order_by(LedgerEntry.id))
        ]
        assert await auth.account_id_of(s, user_id=plain.id) == plain_account.id
        assert (await auth.find_user(s, email="plain@example.test")).id == plain.id  # type: ignore[union-attr]
        assert await auth.find_user(s, email="nobody@example.test") is None
    assert entries == [(account.id, "bonus", 1250, "opening credits")]  # no zero entry for the second user
    with pytest.raises(Conflict) as taken:
        async with cg_sessionmaker() as s, s.begin():
            await auth.create_user(s, email="new@example.test")
    assert taken.value.message == "a user with email 'new@example.test' already exists"


async def test_keys_are_stored_as_digests_and_expire(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    async with cg_sessionmaker() as s, s.begin():
        lasting = await auth.issue_key(s, user_id=cg_funded_user.id)
        brief = await auth.issue_key(s, user_id=cg_funded_user.id, ttl=timedelta(hours=1))
    assert re.fullmatch(r"cg_[\w-]{43}", lasting)
    async with cg_sessionmaker() as s:
        rows = {r.key_hash: r for r in await s.scalars(select(ApiKey))}
    stored = rows[hashlib.sha256(lasting.encode()).hexdigest()]
    assert (stored.prefix, stored.expires_at) == (lasting[:10], None)
    expiry = rows[hashlib.sha256(brief.encode()).hexdigest()].expires_at
    assert expiry is not None
    assert timedelta(minutes=59) < expiry.replace(tzinfo=UTC) - utcnow() <= timedelta(hours=1)

    async with cg_sessionmaker() as s:
        assert (await auth.authenticate(s, brief)) is not None
    async with cg_sessionmaker() as s, s.begin():
        past = utcnow() - timedelta(seconds=1)
        await s.execute(update(ApiKey).where(ApiKey.key_hash == auth.hash_key(brief)).values(expires_at=past))
    async with cg_sessionmaker() as s:
        assert await auth.authenticate(s, brief) is None
        assert await auth.authenticate(s, "cg_unknown") is None
        assert await auth.authenticate(s, lasting) is not None


async def test_a_principal_names_whose_account_pays(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    personal = auth.Principal(cg_funded_user.id, cg_funded_user.email, 5, False, 5)
    async with cg_sessionmaker() as s:
        alone = await auth.authenticate(s, cg_funded_user.key)
        assert alone == auth.Principal(
            cg_funded_user.id, cg_funded_user.email, cg_funded_user.account_id, False, cg_funded_user.account_id
        )
        assert alone == await auth.principal_for(
            s,
            user_id=cg_funded_user.id,
            email=cg_funded_user.email,
            is_admin=False,
            personal_account_id=cg_funded_user.account_id,
        )
    assert personal.quota_subject == f"user:{cg_funded_user.id}"
    async with cg_sessionmaker() as s, s.begin():
        org = Org(name="Acme")
        s.add(org)
        await s.flush()
        org_account = Account(org_id=org.id)
        membership = Membership(org_id=org.id, user_id=cg_funded_user.id, role="admin")
        s.add_all([org_account, membership])
    async with cg_sessionmaker() as s:
        member = await auth.authenticate(s, cg_funded_user.key)
        same = await auth.principal_for(
            s,
            user_id=cg_funded_user.id,
            email=cg_funded_user.email,
            is_admin=False,
            personal_account_id=cg_funded_user.account_id,
        )
    expected = auth.Principal(
        cg_funded_user.id,
        cg_funded_user.email,
        org_account.id,
        False,
        cg_funded_user.account_id,
        org.id,
        membership.id,
        "admin",
    )
    assert member == same == expected
    assert expected.quota_subject == f"org:{org.id}"


async def test_the_principal_cache_is_read_first_and_expiry_still_checked(
    cg_sessionmaker: SM, cg_funded_user: TestUser
) -> None:
    caches = Caches(60)
    first = await auth.authenticate_cached(caches, cg_sessionmaker, cg_funded_user.key)
    assert first is not None
    assert caches.principal.get(auth.hash_key(cg_funded_user.key)) is not None
    assert await auth.authenticate_cached(caches, None, cg_funded_user.key) == first  # type: ignore[arg-type]
    assert await auth.authenticate_cached(caches, cg_sessionmaker, "cg_unknown") is None
    assert caches.principal.get(auth.hash_key("cg_unknown")) is None  # an unknown key is not cached
    digest = auth.hash_key(cg_funded_user.key)
    caches.principal.put(digest, (first, utcnow() - timedelta(seconds=1)))
    assert await auth.authenticate_cached(caches, None, cg_funded_user.key) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "status", "code", "message"),
    [
        ({}, 401, "missing_api_key", "missing API key: send Authorization: Bearer <key> or x-api-key: <key>"),
        ({"Authorization": "Bearer cg_wrong"}, 401, "invalid_api_key", "invalid API key"),
        ({"x-api-key": "cg_wrong"}, 401, "invalid_api_key", "invalid API key"),
    ],
)
async def test_key_refusals_name_the_fix(
    async_client: httpx.AsyncClient, headers: dict[str, str], status: int, code: str, message: str
) -> None:
    response = await async_client.get("/user/balance", headers=headers)
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["message"]) == (status, code, message)


async def test_either_header_carries_the_key_and_bearer_wins(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser
) -> None:
    for headers in ({"x-api-key": cg_funded_user.key}, {"Authorization": f"Bearer {cg_funded_user.key}"}):
        assert (await async_client.get("/user/balance", headers=headers)).status_code == 200
    both = {"Authorization": f"Bearer {cg_funded_user.key}", "x-api-key": "cg_wrong"}
    assert (await async_client.get("/user/balance", headers=both)).status_code == 200
    admin_only = await async_client.get("/admin/settings/credit-increment", headers=cg_funded_user.headers)
    assert (admin_only.status_code, admin_only.json()["error"]["message"]) == (403, "this route needs an admin key")


async def test_any_positive_opening_amount_is_granted(cg_sessionmaker: SM) -> None:
    async with cg_sessionmaker() as s, s.begin():
        _, one = await auth.create_user(s, email="one@example.test", credits=Decimal(1))
        _, half = await auth.create_user(s, email="half@example.test", credits=Decimal("0.5"))
    async with cg_sessionmaker() as s:
        amounts = {e.account_id: e.amount for e in await s.scalars(select(LedgerEntry))}
    assert amounts == {one.id: 100, half.id: 50}


async def test_history_pages_and_summaries_per_period(cg_sessionmaker: SM, cg_funded_user: TestUser) -> None:
    from datetime import timezone

    from creditgate.ledger import repository
    from creditgate.ledger import service as ledger

    account = cg_funded_user.account_id
    async with cg_sessionmaker() as s, s.begin():  # the harness's opening bonus of 1,000 is entry one
        for amount, type_ in (("40", "purchase"), ("-15", "refund"), ("5", "bonus")):
            await ledger.post_entry(s, account_id=account, amount=Decimal(amount), type=type_)
        hold = await ledger.place_hold(
            s, account_id=account, amount=Decimal(3), request_id="r", ttl=timedelta(minutes=1)
        )
        await ledger.settle_hold(s, hold_id=hold, request_id="r", charge=Decimal("2.5"))
    async with cg_sessionmaker() as s:
        entries = list((await repository.page(s, account, limit=100, offset=0))[0])
    assert [e.type for e in entries] == ["api_usage", "release", "hold", "bonus", "refund", "purchase", "bonus"]
    async with cg_sessionmaker() as s, s.begin():  # the same instant for two entries: the id breaks the tie
        when = entries[3].created_at
        await s.execute(update(LedgerEntry).where(LedgerEntry.account_id == account).values(created_at=when))
        await s.execute(
            update(LedgerEntry).where(LedgerEntry.id == entries[-1].id).values(created_at=when - timedelta(hours=1))
        )
    async with cg_sessionmaker() as s:
        ids, total = await repository.page(s, account, limit=3, offset=1)
        assert ([e.id for e in ids], total) == ([e.id for e in entries[1:4]], 7)
        assert (await repository.page(s, account, limit=9, offset=0, type_="bonus"))[1] == 2
        since = await repository.page(s, account, limit=9, offset=0, start=when)  # start is inclusive
        until = await repository.page(s, account, limit=9, offset=0, end=when)  # end is exclusive
        assert (since[1], until[1]) == (6, 1)
        in_paris = when.astimezone(timezone(timedelta(hours=1)))  # the same instant, another zone
        assert (await repository.page(s, account, limit=9, offset=0, end=in_paris))[1] == 1
        naive = when.replace(tzinfo=None)  # a naive bound is UTC
        assert (await repository.page(s, account, limit=9, offset=0, end=naive))[1] == 1
        assert repository.as_utc(None) is None
        everything = await repository.summary(s, account)
        recent = await repository.summary(s, account, start=when)
        before = await repository.summary(s, account, end=when)
    assert everything == repository.Summary(
        total_spent=Decimal("2.50"),
        total_purchased=Decimal("40.00"),
        total_bonus=Decimal("1005.00"),
        total_refunded=Decimal("15.00"),
        net_balance=Decimal("1027.50"),
    )
    assert (recent.total_bonus, recent.total_purchased, recent.net_balance) == (
        Decimal("5.00"),
        Decimal("40.00"),
        Decimal("27.50"),
    )
    assert (before.total_bonus, before.total_spent, before.net_balance) == (
        Decimal("1000.00"),
        Decimal("0.00"),
        Decimal("1000.00"),
    )
