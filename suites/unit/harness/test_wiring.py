"""The app wired for the test (issue 27, item 2): ``harness_env`` and the fakes' variables reach the in-process app
and every live server alike; a test's Redis keys go with it; a wrong ini key is named."""

from __future__ import annotations

import pytest
import redis

from creditgate_harness import Fake, FakeProvider, FakeStripe, Service
from creditgate_harness.fixtures import env

pytest_plugins = ["pytester"]

# A stranger's app: reads its settings from its own variables when it is built, like most apps do.
APP = """
import os

import httpx
import redis.asyncio as redis
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

metadata = MetaData()
notes = Table("notes", metadata, Column("id", Integer, primary_key=True), Column("text", String))
NAMES = ("NOTES_DATABASE_URL", "NOTES_REDIS_URL", "NOTES_PREFIX", "MY_OPENAI", "OPENAI_BASE_URL", "STRIPE_API_BASE")


def create_app():
    engine = create_async_engine(os.environ["NOTES_DATABASE_URL"])
    cache = redis.Redis.from_url(os.environ["NOTES_REDIS_URL"])
    prefix = os.environ["NOTES_PREFIX"]

    async def add(request):
        async with engine.begin() as conn:
            await conn.execute(insert(notes).values(text=(await request.json())["text"]))
            count = await conn.scalar(select(func.count()).select_from(notes))
        await cache.set(f"{prefix}last", "x")
        await cache.incr(f"{prefix}count")
        return JSONResponse({"count": count})

    async def ask(request):
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                os.environ["MY_OPENAI"] + "/chat/completions",
                headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
        return JSONResponse({"content": answer.json()["choices"][0]["message"]["content"]})

    async def env(request):
        return JSONResponse({name: os.environ.get(name) for name in NAMES})

    return Starlette(routes=[Route("/notes", add, methods=["POST"]), Route("/ask", ask), Route("/env", env)])
"""
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
pythonpath = .
asgi_app = notes_app:create_app()
harness_metadata = notes_app:metadata
harness_env =
    NOTES_DATABASE_URL={database_url}
    NOTES_REDIS_URL={redis_url}
    NOTES_PREFIX={redis_prefix}
    MY_OPENAI={OPENAI_BASE_URL}
"""
TESTS = """
import sqlite3
from pathlib import Path

import httpx
from creditgate_harness import Reply


async def test_the_in_process_app_gets_the_tests_resources(async_client, fake_openai, database_url, redis_prefix):
    env = (await async_client.get("/env")).json()
    assert env["NOTES_DATABASE_URL"] == database_url
    assert env["NOTES_PREFIX"] == redis_prefix
    assert env["MY_OPENAI"] == env["OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    assert (await async_client.post("/notes", json={"text": "a"})).json() == {"count": 1}
    fake_openai.state.push(Reply(content="in process"))
    assert (await async_client.get("/ask")).json() == {"content": "in process"}
    Path("prefixes.txt").open("a").write(redis_prefix + "\\n")


def test_a_live_server_gets_the_same_names_and_the_in_process_fakes_on_a_port(
    live_server, fake_openai, fake_stripe, database_url, redis_prefix
):
    env = httpx.get(f"{live_server.url}/env").json()
    assert env["NOTES_DATABASE_URL"] == database_url
    assert env["NOTES_PREFIX"] == redis_prefix
    assert env["MY_OPENAI"] == env["OPENAI_BASE_URL"]
    assert env["MY_OPENAI"].startswith("http://127.0.0.1:") and env["MY_OPENAI"].endswith("/v1")
    assert env["STRIPE_API_BASE"].startswith("http://127.0.0.1:")
    fake_openai.state.push(Reply(content="through a port"))
    assert httpx.get(f"{live_server.url}/ask").json() == {"content": "through a port"}
    assert httpx.post(f"{live_server.url}/notes", json={"text": "b"}).json() == {"count": 1}
    path = database_url.removeprefix("sqlite+aiosqlite:///")
    assert sqlite3.connect(path).execute("select text from notes").fetchall() == [("b",)]
    Path("prefixes.txt").open("a").write(redis_prefix + "\\n")

"""


def test_the_app_is_wired_in_process_and_on_a_port_and_its_redis_keys_are_removed(
    pytester: pytest.Pytester, redis_service: Service
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(notes_app=APP, test_wired=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=2)
    prefixes = (pytester.path / "prefixes.txt").read_text().split()
    assert len(prefixes) == 2
    client = redis.Redis.from_url(redis_service.url)
    try:
        left = [key for prefix in prefixes for key in client.scan_iter(match=f"{prefix}*")]
    finally:
        client.close()
    assert left == [], "a test's Redis keys outlived it"


def test_every_fake_uses_the_same_variable_names_in_process_and_on_a_port(
    fake_openai: Fake[FakeProvider],
    fake_openai_server: Fake[FakeProvider],
    fake_anthropic: Fake[FakeProvider],
    fake_anthropic_server: Fake[FakeProvider],
    fake_stripe: Fake[FakeStripe],
    fake_stripe_server: Fake[FakeStripe],
) -> None:
    assert fake_openai.env.keys() == fake_openai_server.env.keys() == {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
    assert fake_anthropic.env.keys() == fake_anthropic_server.env.keys() == {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}
    assert fake_stripe.env.keys() == fake_stripe_server.env.keys()
    assert {"STRIPE_API_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET"} <= fake_stripe.env.keys()
    assert fake_openai.env["OPENAI_API_KEY"] == fake_openai_server.env["OPENAI_API_KEY"]
    fakes = (fake_openai, fake_openai_server, fake_anthropic, fake_anthropic_server, fake_stripe, fake_stripe_server)
    for fake in fakes:
        assert set(fake.env) <= set(env.FAKE_VARIABLES), "a placeholder harness_env cannot name"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("DATABASE_URL", "is not NAME={placeholder}"),
        ("1X={database_url}", "is not NAME={placeholder}"),
        ("X={database}", "no placeholder {database}; there are: database_url, redis_url, redis_prefix, OPENAI_API_KEY"),
        ("X={database_url", "a literal brace is {{ or }}"),
    ],
)
def test_a_bad_harness_env_line_is_named(line: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match=r"harness_env line") as error:
        env.parse([line])
    assert message in str(error.value)
    assert repr(line) in str(error.value)


def test_a_line_is_filled_only_when_its_fake_is_used() -> None:
    lines = env.parse(["A={database_url}/x", "B={OPENAI_BASE_URL}", "# note", "", " C = {redis_prefix}{{literal}} "])
    asked: list[str] = []

    def resource(name: str) -> str:
        asked.append(name)
        return name.upper()

    assert env.resolve(lines, resource, {}) == {"A": "DATABASE_URL/x", "C": "REDIS_PREFIX{literal}"}
    assert sorted(asked) == ["database_url", "redis_prefix"]
    assert env.resolve(lines, resource, {"OPENAI_BASE_URL": "u"})["B"] == "u"


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        (
            "harness_metadata = notes_app:Base.metadata",
            "*harness_metadata = 'notes_app:Base.metadata' cannot be loaded *; "
            'set harness_metadata = "yourpkg.models:Base.metadata" (your SQLAlchemy MetaData)*',
        ),
        ("harness_metadata = notes_app:create_app", "*harness_metadata = 'notes_app:create_app' is a function, not a*"),
        ("harness_alembic_ini = nope/alembic.ini", "*harness_alembic_ini = 'nope/alembic.ini': no such file *"),
        ("harness_env = NOTES_DATABASE_URL={database}", "*harness_env line 'NOTES_DATABASE_URL={database}'*"),
    ],
)
def test_a_wrong_ini_key_is_named_not_the_app(pytester: pytest.Pytester, ini: str, message: str) -> None:
    head = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\npythonpath = .\n"
    pytester.makeini(f"{head}asgi_app = notes_app:create_app()\n{ini}\n")
    pytester.makepyfile(notes_app=APP)
    pytester.makepyfile("def test_x(app_env, database_url):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    assert "asgi_app =" not in result.stdout.str()
