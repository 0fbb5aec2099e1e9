"""Whether a database error means the server could not be reached (retry, answer 503) or refused the statement.

Shared by the ledger's batcher and settle retries (``ledger/fast.py``, ``llm/metering.py``) and the HTTP error
handlers (``errors_http.py``).
"""

from __future__ import annotations

UNREACHABLE = {  # asyncpg's names for "the server went away or is not back yet"
    "ConnectionDoesNotExistError",
    "CannotConnectNowError",
    "AdminShutdownError",
    "ConnectionFailureError",
    "InterfaceError",
    "TooManyConnectionsError",
    # "cannot switch to state N; another operation (M) is in progress": the server ended the connection mid-
    # operation and asyncpg's protocol was left in that state; whether its last statement committed is unknown
    "InternalClientError",
}


def unreachable(exc: BaseException | None) -> bool:
    """The database could not be reached (as opposed to refusing the statement). A ``ValueError`` in the chain is a
    refusal: asyncpg's client-side ``DataError`` (a parameter it cannot encode) is an ``InterfaceError`` too, and
    SQLAlchemy wraps it in one, so the names alone would call a bad parameter an outage."""
    chain: list[BaseException] = []
    while exc is not None:
        chain.append(exc)
        exc = getattr(exc, "orig", None) or exc.__cause__
    if any(getattr(e, "connection_invalidated", False) for e in chain):
        return True
    if any(isinstance(e, ValueError) for e in chain):
        return False
    return any(isinstance(e, OSError) or type(e).__name__ in UNREACHABLE for e in chain)
