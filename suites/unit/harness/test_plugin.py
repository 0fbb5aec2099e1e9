"""The harness as another project sees it: generic fixtures by default, the creditgate layer only when asked."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

GENERIC = (
    "postgres_service",
    "redis_service",
    "redis_prefix",
    "private_postgres",
    "private_redis",
    "private_database_url",
    "database_url",
    "database_setup",
    "database_check",
    "app_env",
    "asgi_app",
    "async_client",
    "live_server",
    "live_server_factory",
    "fake_openai",
    "fake_anthropic",
    "fake_stripe",
    "fake_openai_server",
    "fake_anthropic_server",
    "fake_stripe_server",
    "stripe_webhooks",
    "fake_oidc",
    "notification_receiver",
)
APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hello(request):
    return JSONResponse({"hello": "world"})

app = Starlette(routes=[Route("/", hello)])
"""


def fixture_lines(out: str) -> dict[str, str]:
    """``pytest --fixtures`` output → {fixture name: the docstring line under it}."""
    lines = out.splitlines()
    return {
        ln.split(" ")[0]: (lines[i + 1].strip() if i + 1 < len(lines) else "")
        for i, ln in enumerate(lines)
        if ln and not ln.startswith((" ", "-", "=")) and " -- " in ln
    }


def test_a_foreign_project_sees_only_generic_fixtures_each_documented(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider")
    ours = {name: doc for name, doc in fixture_lines(result.stdout.str()).items() if name in GENERIC}
    assert set(ours) == set(GENERIC)
    assert all(doc and not doc.startswith("no docstring") for doc in ours.values()), ours
    assert "cg_" not in result.stdout.str()


def test_the_creditgate_layer_is_opt_in(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncreditgate_fixtures = true\n")
    out = pytester.runpytest_inprocess("--fixtures", "-p", "no:cacheprovider").stdout.str()
    names = fixture_lines(out)
    for name in ("cg_app", "cg_settings", "cg_funded_user", "cg_user_factory", "cg_ledger_auditor", "cg_flow"):
        assert name in names, f"{name} missing with creditgate_fixtures = true"


def test_async_client_without_an_app_names_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile("async def test_x(async_client):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(['*no ASGI app to test: name your app: asgi_app = "yourpkg.main:app"*'])


def test_async_client_and_live_server_run_the_app_the_ini_names(pytester: pytest.Pytester) -> None:
    pytester.makeini('[pytest]\nasyncio_mode = auto\npythonpath = .\nasgi_app = "hello_app:app"\n'.replace('"', ""))
    pytester.makepyfile(hello_app=APP)
    pytester.makepyfile(
        test_it="""
        import httpx

        async def test_in_process(async_client):
            assert (await async_client.get("/")).json() == {"hello": "world"}

        def test_on_a_port(live_server):
            assert httpx.get(live_server.url + "/").json() == {"hello": "world"}
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_missing_app_attribute_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\npythonpath = .\nasgi_app = hello_app:nope\n")
    pytester.makepyfile(hello_app=APP)
    pytester.makepyfile("async def test_x(async_client):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*asgi_app = 'hello_app:nope' cannot be loaded*"])


def test_database_url_builds_the_projects_own_schema(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\npythonpath = .\nharness_metadata = models:Base.metadata\n")
    pytester.makepyfile(
        models="""
        from sqlalchemy import Integer, String
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

        class Base(DeclarativeBase):
            pass

        class Wallet(Base):
            __tablename__ = "wallets"
            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            owner: Mapped[str] = mapped_column(String(50))
        """
    )
    pytester.makepyfile(
        test_db="""
        import pytest
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        @pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
        async def test_fresh_each_time(database_url):
            engine = create_async_engine(database_url)
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM wallets"))).scalar() == 0
                await conn.execute(text("INSERT INTO wallets (owner) VALUES ('x')"))
            await engine.dispose()
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_database_url_without_a_schema_names_the_ini_keys(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile("def test_x(database_url):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*database_url needs your schema: set harness_metadata = *"])


def test_the_gateway_layer_works_in_a_project_that_opts_in(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\ncreditgate_fixtures = true\n")
    pytester.makepyfile(
        """
        from creditgate_harness import Fault

        async def test_chat(async_client, cg_funded_user):
            r = await async_client.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=cg_funded_user.headers,
            )
            assert r.status_code == 200

        async def test_fault_is_free(async_client, cg_funded_user, cg_upstream, cg_ledger_auditor):
            cg_upstream.push(Fault.status_code(503))
            r = await async_client.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=cg_funded_user.headers,
            )
            assert r.status_code == 502
            assert cg_ledger_auditor().ok
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_auditor_failure_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\ncreditgate_fixtures = true\n")
    pytester.makepyfile(
        """
        import sqlalchemy as sa

        async def test_corrupt(cg_sessionmaker, cg_funded_user):
            async with cg_sessionmaker() as s, s.begin():
                await s.execute(sa.text("UPDATE accounts SET balance = balance + 7"))
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*balance-vs-ledger*account 1: balance 1000.07 != ledger sum 1000.00*"])


def test_bad_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nharness_db = oracle\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*harness_db = 'oracle'*sqlite, postgres*"])


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_flow_report_lists_steps_results_and_balances(pytester: pytest.Pytester, xdist: bool) -> None:
    pytester.makeini("[pytest]\ncreditgate_fixtures = true\n")
    pytester.makepyfile(
        """
        def test_good(cg_flow):
            '''A flow that works.'''
            with cg_flow.step("top up"):
                pass
            cg_flow.balance("alice", before="0.00", after="10.00")

        def test_bad(cg_flow):
            with cg_flow.step("first"):
                pass
            with cg_flow.step("second | breaks"):
                assert 1 == 2, "boom"
            with cg_flow.step("never reached"):
                pass

        def test_without_flow():
            pass
        """
    )
    args = ["-p", "no:cacheprovider", "--flow-report=out/report.md", *(["-n", "2"] if xdist else [])]
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=2, failed=1)
    report = (pytester.path / "out" / "report.md").read_text()
    assert report.startswith("# End-to-end flows: 1 of 2 passed")
    assert "## PASS — `test_flow_report_lists_steps_results_and_balances.py::test_good`" in report
    assert "A flow that works." in report
    assert "| 1 | top up | pass |" in report
    assert "| alice | 0.00 | 10.00 |" in report
    assert "## FAILED — `test_flow_report_lists_steps_results_and_balances.py::test_bad`" in report
    assert "| 2 | second \\| breaks | FAIL: AssertionError(" in report
    assert "never reached" not in report
    assert "test_without_flow" not in report


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_ci_run_that_skipped_everything_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(
        "import pytest\n\ndef test_a():\n    pytest.skip('no server')\n\ndef test_b():\n    pytest.skip('no server')\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2)
    if ci:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*CI=true: all 2 tests were skipped, so nothing was checked*"])
    else:
        assert result.ret == pytest.ExitCode.OK
