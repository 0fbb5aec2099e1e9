"""The client matrix: the ``openai`` and ``anthropic`` SDKs at the lowest version we declare and the latest,
sync and async, plain and streaming, against a real gateway — each call's reported usage checked against the
usage record, the charging table and the balance; each refusal against the SDK's exception and ``code``.

"latest" runs the calls with this venv's Python (the test dependency group resolves to the newest SDKs);
"lowest" builds one venv with both minimums pinned from pyproject.toml, once, cached in pytest's cache
directory, and runs the same calls there. Both SDKs drive ``claude-native`` (an Anthropic-style provider)
and ``test-model`` (an OpenAI-style one), so every call also crosses the translation one way or the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from creditgate.catalog import pricing
from creditgate.settings import Settings
from suites.contract.conftest import ContractGateway

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
CALLS = Path(__file__).with_name("clients") / "sdk_calls.py"
FAKE_TEXT = "Hello from the fake provider."


def declared_minimums() -> dict[str, str]:
    """``{"openai": "1.60", "anthropic": "0.51"}`` from the test dependency group."""
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["test"]
    found = {m[1]: m[2] for spec in group if (m := re.fullmatch(r"(openai|anthropic)>=([\w.]+)", spec.strip()))}
    assert set(found) == {"openai", "anthropic"}, f"no openai/anthropic minimum in {group}"
    return found


def _uv() -> str | None:
    beside = Path(sys.executable).with_name("uv")
    return os.environ.get("UV") or shutil.which("uv") or (str(beside) if beside.exists() else None)


@pytest.fixture(scope="session")
def lowest_sdk_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python with both SDKs at their declared minimum versions (built once, reused from pytest's cache; built
    in this run's temporary directory under ``-p no:cacheprovider``)."""
    pins = [f"{name}=={version}" for name, version in sorted(declared_minimums().items())]
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("sdk-matrix")) if cache is not None else tmp_path_factory.mktemp("sdk-matrix")
    root = base / "-".join(pins).replace("==", "")
    python = root / "bin" / "python"
    if (root / "ready").exists():
        return str(python)
    shutil.rmtree(root, ignore_errors=True)
    if uv := _uv():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(root)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), *pins], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    (root / "ready").write_text("\n".join(pins))
    return str(python)


def run_calls(python: str, **config: str) -> dict[str, object]:
    done = subprocess.run([python, str(CALLS), json.dumps(config)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def charge(gateway: ContractGateway, model: str, prompt: int, completion: int) -> Decimal:
    settings = Settings(_env_file=None)
    return pricing.credits_for(
        gateway.catalog.model(model),
        prompt_tokens=prompt,
        completion_tokens=completion,
        margin=settings.margin,
        credit_value_usd=settings.credit_value_usd,
        increment=settings.default_credit_increment,
    )


@pytest.mark.parametrize("model", ["test-model", "claude-native"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("version", ["lowest", "latest"])
def test_sdk_calls_are_charged_what_they_report(
    contract_gateway: ContractGateway, request: pytest.FixtureRequest, version: str, sdk: str, model: str
) -> None:
    python = request.getfixturevalue("lowest_sdk_python") if version == "lowest" else sys.executable
    key, poor_key = contract_gateway.new_key(1000), contract_gateway.new_key(0)
    result = run_calls(python, sdk=sdk, model=model, base_url=contract_gateway.server.url, key=key, poor_key=poor_key)
    expected_version = declared_minimums()[sdk] if version == "lowest" else __import__(sdk).__version__
    assert str(result["version"]).startswith(expected_version), result["version"]

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=contract_gateway.server.url, headers=headers) as http:
        rows = list(reversed(http.get("/user/usage", params={"limit": 100}).json()["data"]))
        balance = Decimal(http.get("/user/balance").json()["balance"])
    calls = result["calls"]
    assert isinstance(calls, list)
    assert [c["name"] for c in calls] == ["sync", "sync stream", "async", "async stream"]
    assert len(rows) == len(calls)  # count_tokens and models are not metered
    spent = Decimal(0)
    for call, row in zip(calls, rows, strict=True):
        assert call["text"] == FAKE_TEXT, call
        assert [row["prompt_tokens"], row["completion_tokens"]] == call["usage"], (call, row)
        assert (row["model"], row["outcome"]) == (model, "ok")
        assert Decimal(row["credits"]) == charge(contract_gateway, model, *call["usage"]) > 0
        spent += Decimal(row["credits"])
    assert balance == Decimal(1000) - spent

    assert model in result["models"]  # type: ignore[operator]
    assert result["retrieved"] == model
    errors = result["errors"]
    assert isinstance(errors, dict)
    assert (errors["unknown model"]["class"], errors["unknown model"]["code"]) == ("NotFoundError", "model_not_found")
    assert (errors["wrong key"]["class"], errors["wrong key"]["code"]) == ("AuthenticationError", "invalid_api_key")
    assert (errors["no credits"]["status"], errors["no credits"]["code"]) == (402, "insufficient_credits")
    if sdk == "openai":
        assert (errors["no key"]["class"], errors["no key"]["code"]) == ("AuthenticationError", "missing_api_key")
    else:
        assert {e["envelope"] for e in errors.values()} == {"error"}
        assert errors["no credits"]["type"] == "billing_error"
        counted = result["counted"]
        assert isinstance(counted, int)
        if model == "claude-native":  # the upstream counts: the same number its answers report
            assert counted == calls[0]["usage"][0]
        else:  # no Anthropic-style provider to ask: the gateway's (high) estimate
            assert counted >= calls[0]["usage"][0]
