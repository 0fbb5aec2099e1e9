"""What the request in flight has learned about itself, for its metrics and its log line.

The observability middleware opens a ``RequestInfo`` per HTTP request in a context variable; code deeper
down annotates it (the metered model, the provider the upstream client called, the credits a committed
transaction charged) without knowing about HTTP. Outside a request ``current()`` is ``None`` and every
annotation is a no-op.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from decimal import Decimal


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    model: str = ""
    provider: str = ""
    charged: Decimal | None = None


_CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("creditgate_request", default=None)


def current() -> RequestInfo | None:
    """The request in flight, if any."""
    return _CURRENT.get()


def begin(info: RequestInfo) -> contextvars.Token[RequestInfo | None]:
    return _CURRENT.set(info)


def end(token: contextvars.Token[RequestInfo | None]) -> None:
    _CURRENT.reset(token)


def note_model(model: str) -> None:
    """The model this request is metered for (the ``model`` label and log field)."""
    info = _CURRENT.get()
    if info is not None:
        info.model = model
