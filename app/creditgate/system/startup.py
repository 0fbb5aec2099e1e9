"""Start-up checks that fail with one line an operator can act on, and no traceback.

``StartupError(setting, problem, fix)`` reads ``SETTING: problem — fix``. The CLI prints it and exits 2
(``--debug`` or log level debug shows the traceback too); a gateway started by plain uvicorn logs the same
line when its lifespan fails (``StartupErrorMiddleware``). ``explain`` recognises what configuration
mistakes raise — pydantic validation, SQLAlchemy/asyncpg/sqlite connection errors, socket errors, a
broken catalog — and anything it does not recognise keeps its traceback, because that is a bug.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from creditgate.catalog.service import DEFAULT_CATALOG, Catalog
from creditgate.db.engine import create_engine
from creditgate.settings import Settings

DATABASE_URL = "CREDITGATE_DATABASE_URL"
URL_EXAMPLES = "use postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB or sqlite+aiosqlite:///./creditgate.db"


class StartupError(Exception):
    """A configuration or connection problem, said in one line: the setting, what is wrong, the fix."""

    def __init__(self, setting: str, problem: str, fix: str | None = None) -> None:
        self.setting, self.problem, self.fix = setting, problem, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.setting}: {self.problem}" + (f" — {self.fix}" if self.fix else "")


# -- settings ------------------------------------------------------------------------------------------------
def settings_error(exc: ValidationError) -> StartupError:
    """The first problem pydantic found in the environment, named by its variable."""
    error = exc.errors(include_url=False)[0]
    loc = [str(p) for p in error.get("loc", ())]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:  # a model-level check: its message already names the settings
        setting, _, rest = message.partition(" ")
        return StartupError(setting, rest) if setting.startswith("CREDITGATE_") else StartupError("settings", message)
    name = loc[0]
    field = Settings.model_fields.get(name)
    shown = "" if field is not None and field.repr is False else f" (got {error.get('input')!r})"
    problem, _, fix = message.partition(" — ")  # our validators say "problem — fix"
    if not fix:
        default = field.get_default(call_default_factory=True) if field is not None else None
        fix = f"unset it for the default ({default})" if default not in (None, "", {}) else "fix or unset it"
        if field is not None and field.description:
            fix = f"{field.description}; {fix}"
    return StartupError(f"CREDITGATE_{name.upper()}", f"{problem[0].lower()}{problem[1:]}{shown}", fix)


def load_settings(**overrides: Any) -> Settings:
    """``Settings()`` from the environment, or a ``StartupError`` naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise settings_error(exc) from exc


# -- catalog -------------------------------------------------------------------------------------------------
def load_catalog(path: Path | None) -> Catalog:
    """The catalog file, or a ``StartupError`` saying what is wrong with it (before anything is migrated)."""
    where = path or DEFAULT_CATALOG
    fix = "fix the file, or unset CREDITGATE_CATALOG for the built-in catalog"
    try:
        raw = where.read_text()
    except FileNotFoundError:
        raise StartupError(
            "CREDITGATE_CATALOG", f"no such file {where}", "point it at a catalog JSON file or unset it"
        ) from None
    except OSError as exc:
        raise StartupError("CREDITGATE_CATALOG", f"cannot read {where} ({exc.strerror})", fix) from None
    try:
        json.loads(raw)
    except ValueError as exc:
        raise StartupError("CREDITGATE_CATALOG", f"{where} is not valid JSON ({exc})", fix) from None
    try:
        return Catalog.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        at = ".".join(str(p) for p in error.get("loc", ())) or "top level"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        raise StartupError("CREDITGATE_CATALOG", f"{where}: {at}: {message}", fix) from None


# -- database ------------------------------------------------------------------------------------------------
def _where(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def database_error(exc: BaseException, database_url: str) -> StartupError | None:
    """What a failed connection to ``database_url`` means for an operator, or ``None`` if it is not that."""
    if isinstance(exc, sa_exc.ArgumentError):
        return StartupError(DATABASE_URL, "not a database URL", URL_EXAMPLES)
    if isinstance(exc, (sa_exc.NoSuchModuleError, ModuleNotFoundError)):
        return StartupError(DATABASE_URL, "no async driver for this URL's scheme", URL_EXAMPLES)
    try:
        url = make_url(database_url)
    except sa_exc.ArgumentError:
        return StartupError(DATABASE_URL, "not a database URL", URL_EXAMPLES)
    if url.get_backend_name() == "sqlite":
        if isinstance(exc, (sa_exc.OperationalError, sqlite3.OperationalError)):
            reason = str(getattr(exc, "orig", None) or exc)
            return StartupError(
                DATABASE_URL,
                f"cannot open SQLite file {url.database} ({reason})",
                "does its directory exist, and may this user write there?",
            )
        return None
    if isinstance(exc, socket.gaierror):
        return StartupError(DATABASE_URL, f"cannot resolve host {url.host!r}", "check the host name in the URL")
    if isinstance(exc, TimeoutError):
        return StartupError(DATABASE_URL, f"timed out connecting to {_where(url)}", "is the host reachable?")
    if isinstance(exc, OSError):
        refused = isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED or "111" in str(exc)
        reason = "connection refused" if refused else (exc.strerror or str(exc))
        return StartupError(DATABASE_URL, f"cannot connect to {_where(url)} ({reason})", "is Postgres running?")
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        message = str(exc.orig)
        if sqlstate == "3D000":
            create = f"createdb -h {url.host or 'localhost'} -p {url.port or 5432} -U {url.username or 'postgres'}"
            return StartupError(DATABASE_URL, message, f"create it ({create} {url.database}) or fix the name")
        if sqlstate in {"28000", "28P01"}:
            return StartupError(DATABASE_URL, message, "check the user and password in the URL")
        if sqlstate == "42501":
            return StartupError(DATABASE_URL, message, "grant this user CREATE on the database, or use its owner")
    return None


async def check_database(database_url: str) -> None:
    """Connect once and run ``SELECT 1``; a ``StartupError`` says why it failed."""
    with contextlib.suppress(sa_exc.ArgumentError):
        url = make_url(database_url)
        folder = Path(url.database).parent if url.get_backend_name() == "sqlite" and url.database else None
        if folder is not None and url.database != ":memory:" and not folder.is_dir():
            # Checked here, not by connecting: aiosqlite's thread outlives a failed connect and prints a traceback.
            raise StartupError(
                DATABASE_URL,
                f"cannot open SQLite file {url.database} (unable to open database file)",
                "does its directory exist, and may this user write there?",
            )
    try:
        engine = create_engine(database_url, pool_size=1)
    except Exception as exc:
        raise (database_error(exc, database_url) or exc) from exc
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise (database_error(exc, database_url) or exc) from exc
    finally:
        await engine.dispose()


def connections_per_worker(*, pool_size: int, fast_ledger: bool) -> int:
    """The most Postgres connections one worker opens: the ORM engine's pool and its overflow (``db/engine.py``),
    the one-round-trip ledger's asyncpg pool, and the cache listener."""
    return 2 * pool_size + (pool_size if fast_ledger else 0) + 1


async def check_connection_budget(database_url: str, *, workers: int, pool_size: int, fast_ledger: bool) -> None:
    """Fail now if ``workers`` workers with these pools can open more connections than Postgres accepts: under load
    they would, and every request past the limit fails ("too many clients"), on this gateway and anything else
    sharing that server."""
    if make_url(database_url).get_backend_name() != "postgresql":
        return
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_setting('max_connections')::int, "
                        "current_setting('superuser_reserved_connections')::int"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    allowed = row[0] - row[1]
    each = connections_per_worker(pool_size=pool_size, fast_ledger=fast_ledger)
    if workers * each <= allowed:
        return
    fitting = ((allowed // workers) - 1) // (3 if fast_ledger else 2)
    fix = (
        f"set CREDITGATE_DB_POOL_SIZE={fitting} (or less), run fewer --workers, or raise max_connections"
        if fitting >= 1
        else "run fewer --workers, or raise Postgres's max_connections"
    )
    raise StartupError(
        "--workers",
        f"{workers} workers may open {workers * each} Postgres connections ({each} each at CREDITGATE_DB_POOL_SIZE "
        f"{pool_size}), the server accepts {allowed} (max_connections {row[0]} − {row[1]} reserved)",
        fix,
    )


def safe_url(database_url: str) -> str:
    """The URL with its password masked, for printing."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "(unparseable URL)"


# -- ports ---------------------------------------------------------------------------------------------------
def check_port(host: str, port: int, *, option: str = "--port") -> None:
    """Fail now if ``host:port`` cannot be bound (uvicorn would fail later, after side effects)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                problem = f"{host}:{port} is already in use"
                fix = f"stop what listens there, or pick another port with {option}"
            elif exc.errno == errno.EACCES:
                problem, fix = f"not allowed to listen on {host}:{port}", "use a port above 1023"
            else:
                problem, fix = f"cannot listen on {host}:{port} ({exc.strerror})", "check --host"
            raise StartupError(f"{option} {port}", problem, fix) from None


def check_multiprocess_dir() -> None:
    """prometheus-client's multiprocess mode needs its directory to exist before the workers write to it."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and not Path(path).is_dir():
        raise StartupError("PROMETHEUS_MULTIPROC_DIR", f"{path} is not a directory", "create it (empty) or unset it")


def explain(exc: BaseException, *, database_url: str | None = None) -> StartupError | None:
    """``exc`` as a ``StartupError`` if it is a configuration or connection problem, else ``None``."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return settings_error(exc)
    if database_url is not None:
        return database_error(exc, database_url)
    return None


# -- a gateway under plain uvicorn ---------------------------------------------------------------------------
class StartupErrorMiddleware:
    """Replace the traceback Starlette sends with ``lifespan.startup.failed`` by the one line (debugging: both).

    The lifespan stores the ``StartupError`` on ``app.state.startup_error`` before re-raising it.
    """

    lifespan_only = True  # LeanApp: the inference routes may skip it

    def __init__(self, app: ASGIApp, *, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            error = getattr(scope["app"].state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and error is not None:
                line = (
                    f"{message.get('message', '')}\n{error}"
                    if self.debug
                    else f"{error} (debug: CREDITGATE_LOG_LEVEL=debug)"
                )
                message = {**message, "message": line}
            await send(message)

        await self.app(scope, receive, send_wrapper)
