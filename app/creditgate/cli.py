"""``creditgate serve | migrate | create-key``."""

from __future__ import annotations

import argparse
import asyncio
import os
from decimal import Decimal, InvalidOperation

from creditgate.auth import service as auth
from creditgate.db.engine import create_engine, create_sessionmaker
from creditgate.db.migrate import upgrade_url
from creditgate.money import credits
from creditgate.settings import Settings

DEMO_DATABASE_URL = "sqlite+aiosqlite:///./creditgate-demo.db"
DEMO_EMAIL = "demo@creditgate.local"


async def _create_key(url: str, *, email: str, amount: Decimal, admin: bool) -> str:
    """A key for ``email``, creating the user (with ``amount`` opening credits) if it is new."""
    engine = create_engine(url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            user = await auth.find_user(session, email=email)
            if user is None:
                user, _ = await auth.create_user(session, email=email, is_admin=admin, credits=amount)
            return await auth.issue_key(session, user_id=user.id)
    finally:
        await engine.dispose()


def _credits_arg(value: str) -> Decimal:
    try:
        amount = credits(value)
    except (InvalidOperation, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a credit amount like 100 or 12.50") from exc
    if amount < 0:
        raise argparse.ArgumentTypeError("credits cannot be negative")
    return amount


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    if args.demo:
        os.environ["CREDITGATE_DEMO"] = "true"
        os.environ["CREDITGATE_DATABASE_URL"] = DEMO_DATABASE_URL
    settings = Settings()
    upgrade_url(settings.database_url)  # serve migrates first; create_app alone refuses an old schema
    if args.demo:
        key = asyncio.run(_create_key(settings.database_url, email=DEMO_EMAIL, amount=Decimal(1000), admin=True))
        print(f"demo user {DEMO_EMAIL} (1,000 credits on first start); API key:\n  {key}", flush=True)
        print(
            f"try: curl -s http://{args.host}:{args.port}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}\'',
            flush=True,
        )
    uvicorn.run(
        "creditgate.main:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="creditgate", description="An LLM gateway with prepaid credits.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="migrate the database, then serve the gateway")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1)
    p_serve.add_argument("--log-level", default="info")
    p_serve.add_argument("--demo", action="store_true", help="SQLite, a funded demo key, a built-in fake upstream")

    sub.add_parser("migrate", help="migrate CREDITGATE_DATABASE_URL to the latest schema")

    p_key = sub.add_parser("create-key", help="print a new API key (creating the user if needed)")
    p_key.add_argument("--email", required=True)
    p_key.add_argument("--credits", type=_credits_arg, default=Decimal(0), help="opening credits for a new user")
    p_key.add_argument("--admin", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "migrate":
        url = Settings().database_url
        upgrade_url(url)
        print(f"migrated {url}")
    else:
        url = Settings().database_url
        upgrade_url(url)
        print(asyncio.run(_create_key(url, email=args.email, amount=args.credits, admin=args.admin)))


if __name__ == "__main__":
    main()
