"""app/observability/logs.py and the request line: one JSON object per request, credentials never written."""

from __future__ import annotations

import json
import logging
import re
import sys

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgate.observability import logs
from creditgate.observability.logs import REQUEST_LOGGER, JsonFormatter, RedactingFormatter, logging_config, redact
from creditgate.testing.gateway import TestUser

CHAT = "/v1/chat/completions"
BODY = {"model": "test-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


async def test_one_json_line_per_request_with_its_id_route_model_provider_and_credits(
    async_client: httpx.AsyncClient, cg_funded_user: TestUser, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await async_client.post(CHAT, json=BODY, headers=cg_funded_user.headers)
    records = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    fields = json.loads(line)
    assert fields == {
        "ts": fields["ts"],
        "level": "info",
        "logger": REQUEST_LOGGER,
        "message": f"POST {CHAT} 200",
        "request_id": response.headers["X-Request-Id"],
        "method": "POST",
        "route": CHAT,
        "status": 200,
        "latency_ms": fields["latency_ms"],
        "model": "test-model",
        "provider": "fake",
        "credits": response.headers["X-Creditgate-Credits-Charged"],
    }
    assert fields["latency_ms"] > 0


@pytest.mark.parametrize(
    "secret",
    [
        "cg_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg",  # a creditgate API key
        "sk_test_51Habcdefghijklmnop",  # Stripe secret key
        "sk_live_51Habcdefghijklmnop",
        "whsec_abcdefghijklmnopqrstuvwx",  # Stripe webhook secret
        "sk-proj-abcdefghijklmnopqrstuvwxyz",  # a vendor (BYOK) key
        "6x0nKXuD-JgcdNs3M2sGMTUY7rRFFD4vsqH6aJq6gEQ=",  # a Fernet key
    ],
)
def test_redact_masks_credential_shapes(secret: str) -> None:
    for text in (f"key {secret} used", f"Authorization: Bearer {secret}", f'{{"api_key": "{secret}"}}'):
        assert secret not in redact(text)
        assert "[redacted]" in redact(text)


# re.IGNORECASE also folds these onto ASCII letters: ſ → s, K (Kelvin) → k, ı and İ → i.
FOLDS = ["\u017f", "\u212a", "\u0131", "\u0130"]
SHAPES = ["BeArEr ", "API-KEY=", "apikey:", "Secret ", "PASSWORD'", "CG_", "cg_", "Sk_Live_", "rk_test_", "pk_",
          "WHSEC_", "sk-", "SK-", "=", "-", "_", " ", "\"", "6x0nKXuD-JgcdNs3M2sGMTUY7rRFFD4vsqH6aJq6gEQ",
          "abcdefghijklmnopqrstuvwxyz0123456789", "\u017fecret ", "pa\u017f\u017fword=", "wh\u017fec_",
          "\u017fk-", "\u212a" * 43, *FOLDS]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(st.sampled_from(SHAPES) | st.text(max_size=4), max_size=6).map("".join))
def test_redact_answers_as_the_whole_pattern_does(text: str) -> None:
    """The quick look for what a credential needs (logs._NEEDS) never lets through what _SECRET would mask."""
    assert redact(text) == logs._SECRET.sub(lambda m: (m.group("keep") or "") + "[redacted]", text)


def test_the_only_non_ascii_letters_ignorecase_folds_are_the_known_four() -> None:
    """logs._NEEDS relies on lower() (and one replace) seeing what re.IGNORECASE sees: a Python release adding a
    fold must fail here first."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    assert {c for c in map(chr, range(128, 0x110000)) if letter.fullmatch(c)} == set(FOLDS)


def test_redact_keeps_ordinary_text() -> None:
    text = "POST /v1/chat/completions 200 request_id=3f2a9c0e1b7d4e5f8a6b9c0d1e2f3a4b model=gpt-4o-mini"
    assert redact(text) == text


def test_formatters_redact_messages_and_tracebacks() -> None:
    try:
        raise ValueError("upstream refused key sk-abcdefghijklmnopqrstuv")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "with %s", ("whsec_abcdefghijkl",), None)
        record.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), RedactingFormatter("%(message)s")):
        out = formatter.format(record)
        assert "whsec_abcdefghijkl" not in out
        assert "sk-abcdefghijklmnopqrstuv" not in out
        assert "ValueError" in out


def test_logging_config_silences_uvicorn_access_and_formats_json() -> None:
    config = logging_config(fmt="json", level="debug")
    assert config["formatters"]["creditgate"]["()"] is JsonFormatter
    assert config["loggers"]["uvicorn.access"]["handlers"] == []
    assert config["root"]["level"] == "DEBUG"
    assert logging_config(fmt="text", level="info")["formatters"]["creditgate"]["()"] is RedactingFormatter
