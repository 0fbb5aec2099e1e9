"""Run and check Alembic migrations programmatically (``creditgate migrate``).

Alembic itself (with mako and pygments: ~0.35 s of a ~3.5 s start) loads only to migrate. Serving needs two
revisions, read without it: the code's head from the migration scripts' own ``revision``/``down_revision``
assignments (``head_revision``, once a process; ``suites/unit/db`` holds it to Alembic's answer) and the
database's from the ``alembic_version`` table.
"""

from __future__ import annotations

import ast
import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from creditgate.db.engine import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _revisions(script: Path) -> tuple[str, str | None]:
    """A migration script's ``revision`` and ``down_revision`` (module-level string constants)."""
    found: dict[str, str | None] = {}
    for node in ast.parse(script.read_text()).body:
        targets: list[ast.expr]
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                found[target.id] = ast.literal_eval(value)
    return str(found["revision"]), found.get("down_revision")


@functools.cache
def head_revision() -> str:
    """The newest revision of the migration scripts: the one no script names as its ``down_revision``."""
    links = [_revisions(script) for script in sorted((MIGRATIONS / "versions").glob("*.py"))]
    heads = {revision for revision, _ in links} - {down for _, down in links if down is not None}
    if len(heads) != 1:
        raise RuntimeError(f"the migration scripts have {len(heads)} heads ({sorted(heads)}); they must have one")
    return heads.pop()


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database behind ``engine`` to the latest revision."""

    from alembic import command

    def _run(connection: Connection) -> None:
        cfg = _config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision (``alembic_version``), or ``None`` for a database never migrated."""

    def _read(connection: Connection) -> str | None:
        if not inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return rows[0] if len(rows) == 1 else None

    async with engine.connect() as conn:
        return await conn.run_sync(_read)


def upgrade_url(url: str) -> None:
    """Synchronous entry point for the CLI."""

    async def _main() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(_main())
