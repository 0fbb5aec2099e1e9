"""``creditgate serve | migrate | create-key``: every mistake an operator can make is one line and exit code 2.

A bad setting, a catalog that does not load, a database that does not answer, a busy port: the command
prints ``creditgate: SETTING: problem — fix`` and exits 2 before doing anything (no key is issued, nothing is
migrated). ``--debug`` (or ``CREDITGATE_LOG_LEVEL=debug``) prints the traceback too. ``--demo`` works with
every command and always means the same database, ``./creditgate-demo.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import sys
import tempfile
import traceback
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.db.migrate import upgrade_url
from creditgate.money import credits
from creditgate.observability import metrics
from creditgate.observability.logs import logging_config
from creditgate.settings import Settings
from creditgate.system import demo, startup
from creditgate.system.startup import StartupError

DEMO_FILE = "creditgate-demo.db"
DEMO_EMAIL = demo.EMAIL
DEMO_CREDITS = Decimal(1000)
# The most a new user can be given from the command line: $10,000 at the default credit value, the largest
# top-up Stripe checkout accepts. More is a typo far more often than an intent; grant it in steps.
MAX_OPENING_CREDITS = Decimal(1_000_000)
_EMAIL = re.compile(r"[^@\s]{1,64}@(?=.{1,255}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
_AMOUNT = re.compile(r"\d+(?:\.\d+)?")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (with where to look) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# -- argument types ------------------------------------------------------------------------------------------
def _email_arg(value: str) -> str:
    if len(value) > 320 or not _EMAIL.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an email address like you@example.com")
    return value


def _credits_arg(value: str) -> Decimal:
    if not _AMOUNT.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a credit amount like 100 or 12.50")
    try:
        amount = credits(value)
    except (InvalidOperation, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a credit amount like 100 or 12.50") from exc
    if amount > MAX_OPENING_CREDITS:
        raise argparse.ArgumentTypeError(
            f"{value} is more than {MAX_OPENING_CREDITS:,} credits; grant more with POST /admin/credits"
        )
    return amount


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _port_arg(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (1-65535)")
    return int(value)


# -- the commands --------------------------------------------------------------------------------------------
def _use_demo(args: argparse.Namespace, *, must_exist: bool) -> None:
    """``--demo``: the demo's settings for this process and the workers it starts."""
    path = Path.cwd() / DEMO_FILE
    if must_exist and not path.exists():
        raise StartupError(
            "--demo", f"no demo database at {path}", "start `creditgate serve --demo` in this directory first"
        )
    os.environ["CREDITGATE_DEMO"] = "true"
    os.environ["CREDITGATE_DATABASE_URL"] = f"sqlite+aiosqlite:///{path}"
    if getattr(args, "port", None) is not None and "CREDITGATE_PUBLIC_URL" not in os.environ:
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 - a comparison
        os.environ["CREDITGATE_PUBLIC_URL"] = f"http://{host}:{args.port}"


def _migrate(settings: Settings) -> None:
    """Check the database answers, then bring it to the latest schema."""
    asyncio.run(startup.check_database(settings.database_url))
    try:
        upgrade_url(settings.database_url)
    except Exception as exc:
        raise (startup.database_error(exc, settings.database_url) or exc) from exc


async def _create_key(url: str, *, email: str, amount: Decimal, admin: bool) -> tuple[str, bool]:
    """A key for ``email``, creating the user (with ``amount`` opening credits) if it is new; (key, created)."""
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            user = await auth.find_user(session, email=email)
            created = user is None
            if user is None:
                user, _ = await auth.create_user(session, email=email, is_admin=admin, credits=amount)
            return await auth.issue_key(session, user_id=user.id), created
    finally:
        await engine.dispose()


def _fresh_multiprocess_dir() -> None:
    """prometheus-client's multiprocess mode for several workers: a directory, emptied of a previous run's files."""
    path = os.environ.get(metrics.MULTIPROC_ENV)
    if not path:
        os.environ[metrics.MULTIPROC_ENV] = tempfile.mkdtemp(prefix="creditgate-metrics-")
        return
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


APP = "creditgate.main:create_app_from_env"
SERVERS = ("uvicorn", "granian")


def server_command(server: str, *, host: str, port: int, workers: int) -> list[str]:
    """``python -m`` arguments serving the gateway under ``server``, the way ``serve`` runs it (bench/servers.py
    starts it so): uvicorn on uvloop + httptools, or granian's Rust HTTP server with asyncio on uvloop."""
    where = ["--host", host, "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    if server == "uvicorn":
        return ["uvicorn", APP, "--factory", "--loop", "uvloop", "--http", "httptools", "--no-access-log", *where]
    if server == "granian":
        return ["granian", APP, "--factory", "--interface", "asgi", "--loop", "uvloop", "--no-access-log", *where]
    raise ValueError(f"server {server!r}: one of {', '.join(SERVERS)}")


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    if args.server == "granian" and importlib.util.find_spec("granian") is None:
        raise StartupError(
            "--server", "granian is not installed", "pip install 'creditgate[granian]', or drop --server granian"
        )
    if args.demo:
        if args.workers > 1:
            raise StartupError(
                "--workers", "the demo runs one worker (its fake Stripe keeps checkouts in memory)", "drop --workers"
            )
        _use_demo(args, must_exist=False)
    if args.log_level:
        os.environ["CREDITGATE_LOG_LEVEL"] = args.log_level  # the workers read it too
    settings = startup.load_settings()
    startup.load_catalog(settings.catalog)  # before anything is migrated (a broken catalog: one line, exit 2)
    startup.check_port(args.host, args.port)
    if settings.metrics_enabled and settings.metrics_port:
        startup.check_port(settings.metrics_host, settings.metrics_port, option="CREDITGATE_METRICS_PORT")
    asyncio.run(startup.check_database(settings.database_url))
    asyncio.run(  # before anything is migrated
        startup.check_connection_budget(
            settings.database_url,
            workers=args.workers,
            pool_size=settings.db_pool_size,
            fast_ledger=settings.fast_ledger,
        )
    )
    _migrate(settings)
    if args.demo:
        key, _ = asyncio.run(_create_key(settings.database_url, email=DEMO_EMAIL, amount=DEMO_CREDITS, admin=True))
        base = settings.public_url.rstrip("/")
        print(f"demo admin {DEMO_EMAIL} (1,000 credits on first start) in {DEMO_FILE}; API key:\n  {key}", flush=True)
        print(
            f"try: curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}\'',
            flush=True,
        )
        print(
            f"top up: curl -s {base}/billing/checkout -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' -d '{\"amount_usd\":\"10.00\"}'  → open its url, press Pay",
            flush=True,
        )
    if args.workers > 1 and settings.metrics_enabled:
        _fresh_multiprocess_dir()
    log_config = logging_config(fmt=settings.log_format, level=settings.log_level)
    if args.server == "granian":
        granian(args, log_config)
        return
    uvicorn.run(
        APP,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_config=log_config,
        access_log=False,  # the gateway logs one line per request itself
    )


def granian(args: argparse.Namespace, log_config: dict[str, Any]) -> None:
    """Serve under granian (``--server granian``; the optional extra ``creditgate[granian]``)."""
    from granian import Granian

    Granian(
        APP,
        factory=True,
        interface="asgi",  # type: ignore[arg-type]  # granian's enums are str enums; it takes their values
        address=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",  # type: ignore[arg-type]
        log_dictconfig=log_config,
        log_access=False,
    ).serve()


def migrate(args: argparse.Namespace) -> None:
    if args.demo:
        _use_demo(args, must_exist=False)
    settings = startup.load_settings()
    _migrate(settings)
    print(f"migrated {startup.safe_url(settings.database_url)}")


def create_key(args: argparse.Namespace) -> None:
    if args.demo:
        _use_demo(args, must_exist=True)
    settings = startup.load_settings()
    _migrate(settings)
    key, created = asyncio.run(
        _create_key(settings.database_url, email=args.email, amount=args.credits, admin=args.admin)
    )
    if not created:
        print(f"{args.email} already exists: a new key, no credits or role changed", file=sys.stderr)
    print(key)


# -- the parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: given before or after the command, a flag is not reset by the other parser's default.
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print tracebacks with errors (default: off)"
    )
    common.add_argument(
        "--demo",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"use the demo's database, ./{DEMO_FILE} (default: off)",
    )
    parser = _Parser(
        prog="creditgate",
        description="An LLM gateway with prepaid credits. Settings come from CREDITGATE_* environment variables.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_serve = sub.add_parser(
        "serve",
        parents=[common],
        help="check the settings, migrate the database, then serve the gateway",
        description="Check the settings, catalog, port and database, migrate, then serve. With --demo: "
        f"SQLite in ./{DEMO_FILE}, a demo admin with 1,000 credits, a built-in fake LLM upstream and fake Stripe.",
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p_serve.add_argument("--port", type=_port_arg, default=8000, help="port to listen on (default: %(default)s)")
    p_serve.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default: %(default)s)")
    p_serve.add_argument(
        "--server",
        choices=SERVERS,
        default="uvicorn",
        help="the ASGI server: uvicorn (uvloop + httptools; the faster in bench.overhead) or granian "
        "(pip install 'creditgate[granian]') (default: %(default)s)",
    )
    p_serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default=None,
        help="log level (default: CREDITGATE_LOG_LEVEL, else info)",
    )

    sub.add_parser(
        "migrate",
        parents=[common],
        help="migrate CREDITGATE_DATABASE_URL to the latest schema",
        description="Migrate CREDITGATE_DATABASE_URL (or the demo's database) to the latest schema.",
    )

    p_key = sub.add_parser(
        "create-key",
        parents=[common],
        help="print a new API key (creating the user if needed)",
        description="Print a new API key for EMAIL, creating the user if it is new.",
    )
    p_key.add_argument("--email", required=True, type=_email_arg, help="the user's email (required)")
    p_key.add_argument(
        "--credits",
        type=_credits_arg,
        default=Decimal(0),
        help=f"opening credits for a new user, 0 to {MAX_OPENING_CREDITS:,} (default: %(default)s)",
    )
    p_key.add_argument("--admin", action="store_true", help="a new user gets the admin role (default: off)")
    return parser


COMMANDS: dict[str, Any] = {"serve": serve, "migrate": migrate, "create-key": create_key}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.demo = getattr(args, "demo", False)
    debug = getattr(args, "debug", False) or os.environ.get("CREDITGATE_LOG_LEVEL", "").lower() == "debug"
    try:
        COMMANDS[args.command](args)
    except StartupError as exc:
        if debug:
            traceback.print_exc()
        print(f"creditgate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
