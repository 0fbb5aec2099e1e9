"""The harness as another project sees it: installed, loaded by entry point, fixtures documented."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    out = result.stdout.str()
    for fixture in (
        "async_client",
        "live_server",
        "postgres_service",
        "redis_service",
        "database_url",
        "funded_user",
        "user_factory",
        "api_key",
        "fake_provider",
        "ledger_auditor",
        "settings",
        "app",
    ):
        line = next(
            (ln for ln in out.splitlines() if ln.startswith(fixture + " ") or ln.startswith(fixture + "\n")), None
        )
        assert line is not None, f"{fixture} missing from pytest --fixtures"
    assert "A user with 1,000 credits" in out
    assert "An httpx client calling the app in-process" in out


def test_a_project_using_only_the_plugin_gets_working_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(
        """
        from creditgate_harness.fakes.providers import Fault

        async def test_chat(async_client, funded_user, fake_provider):
            r = await async_client.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=funded_user.headers,
            )
            assert r.status_code == 200

        async def test_fault_is_free(async_client, funded_user, fake_provider, ledger_auditor):
            fake_provider.push(Fault.status_code(503))
            r = await async_client.post(
                "/v1/chat/completions",
                json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]},
                headers=funded_user.headers,
            )
            assert r.status_code == 502
            assert ledger_auditor().ok
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_auditor_failure_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(
        """
        import sqlalchemy as sa

        async def test_corrupt(db_sessionmaker, funded_user):
            async with db_sessionmaker() as s, s.begin():
                await s.execute(sa.text("UPDATE accounts SET balance = balance + 7"))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*balance-vs-ledger*account 1: balance 1000.07 != ledger sum 1000.00*"])


def test_bad_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nharness_db = oracle\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*harness_db = 'oracle'*sqlite, postgres*"])


@pytest.mark.parametrize("xdist", [False, True], ids=["plain", "xdist"])
def test_flow_report_lists_steps_results_and_balances(pytester: pytest.Pytester, xdist: bool) -> None:
    pytester.makepyfile(
        """
        def test_good(flow):
            '''A flow that works.'''
            with flow.step("top up"):
                pass
            flow.balance("alice", before="0.00", after="10.00")

        def test_bad(flow):
            with flow.step("first"):
                pass
            with flow.step("second | breaks"):
                assert 1 == 2, "boom"
            with flow.step("never reached"):
                pass

        def test_without_flow():
            pass
        """
    )
    args = ["-p", "no:cacheprovider", "--flow-report=out/report.md", *(["-n", "2"] if xdist else [])]
    result = pytester.runpytest_subprocess(*args)
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
