"""Project-wide pytest setup. The harness itself loads as an installed plugin (entry point pytest11).

The smoke suite also runs from a venv holding only pytest and httpx: nothing here may need more.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# Sums the schemathesis case count over xdist workers (pytest only, so the smoke venv can load it too).
pytest_plugins = ["suites.contract.case_count"]


def register_hypothesis_profiles() -> None:
    """``ci`` (200 examples) and ``dev`` (50); HYPOTHESIS_PROFILE or CI picks one, --hypothesis-profile wins."""
    from hypothesis import HealthCheck, settings

    for name, examples in (("ci", 200), ("dev", 50)):
        settings.register_profile(
            name, max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


if importlib.util.find_spec("hypothesis") is not None:
    register_hypothesis_profiles()


def pytest_configure(config: pytest.Config) -> None:
    # The smoke venv has neither pytest-asyncio nor the harness: their ini keys in pyproject.toml are unknown there.
    config.addinivalue_line(
        "filterwarnings", r"ignore:Unknown config option. (asyncio|creditgate|harness)_:pytest.PytestConfigWarning"
    )
