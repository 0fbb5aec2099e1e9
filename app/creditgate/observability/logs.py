"""Logging set-up: text or one JSON object per line (``CREDITGATE_LOG_FORMAT=json``), secrets scrubbed.

Nothing logs request bodies or headers; on top of that every line passes through ``redact``, which masks
anything shaped like a credential (creditgate API keys, Stripe keys and webhook secrets, vendor keys, bearer
tokens), so a secret that reaches a message or a traceback by accident still does not reach the log.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

REQUEST_LOGGER = "creditgate.request"

_SECRET = re.compile(
    r"(?P<keep>Bearer\s+|api[_-]?key[\"'=:\s]+|secret[\"'=:\s]+|password[\"'=:\s]+)[^\s\"',;&]{6,}"
    r"|\bcg_[A-Za-z0-9_-]{16,}"
    r"|\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9_]{6,}"
    r"|\bwhsec_[A-Za-z0-9_]{6,}"
    r"|\bsk-[A-Za-z0-9_-]{12,}"
    r"|\b[A-Za-z0-9_-]{43}=",  # a Fernet key (BYOK encryption)
    re.IGNORECASE,
)


# Each alternative of _SECRET needs one of these (case-insensitively) or a 43-character run before "=". Without any,
# nothing can match: looking for them is ~4 µs on a request's log line, _SECRET's case-insensitive search ~30 µs.
# re's IGNORECASE also matches "ſ" (long s) to "s" and "K" (Kelvin) to "k": lower() turns the Kelvin sign into "k"
# but keeps "ſ", hence the replace (suites/unit/observability/test_logs.py holds the two to the same answers).
_NEEDS = ("bearer", "key", "secret", "password", "cg_", "k_", "whsec_", "sk-")
_FERNET_RUN = re.compile(r"[A-Za-z0-9_-]{43}=", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with anything shaped like a credential replaced by ``[redacted]``."""
    low = text.lower().replace("ſ", "s")
    if not any(needed in low for needed in _NEEDS) and _FERNET_RUN.search(text) is None:
        return text
    return _SECRET.sub(lambda m: (m.group("keep") or "") + "[redacted]", text)


class RedactingFormatter(logging.Formatter):
    """A text line; request lines get their fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(data, default=str))


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the gateway and uvicorn (also passed to ``uvicorn.run``).

    Our per-request line (logger ``creditgate.request``) replaces uvicorn's access log.
    """
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"()": RedactingFormatter, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"creditgate": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "creditgate", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # SQLAlchemy's and httpx's debug lines carry statements and URLs, never credentials; still quieter.
            "sqlalchemy": {"level": "WARNING"},
            "aiosqlite": {"level": "WARNING"},  # its debug lines repeat every statement with its parameters
            "httpcore": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},  # its INFO line is every request URL, and some APIs put keys in URLs
        },
    }
