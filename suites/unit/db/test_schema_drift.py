"""The Alembic head and the ORM models describe the same schema, on SQLite and on Postgres.

Autogenerate's comparison: tables, columns (type, nullability), indexes, unique and foreign keys. Not compared:
CHECK constraints (autogenerate cannot see them) and server defaults (the migrations give ten counters and
flags a database default of 0/false that the models set in Python instead).
"""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, MetaData, String

from creditgate.db.engine import create_engine
from creditgate.db.migrate import head_revision
from creditgate.db.models import Base

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


async def drift(url: str, metadata: MetaData) -> list[Any]:
    """What autogenerate would change to bring the database at ``url`` (at the Alembic head) to ``metadata``."""

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision(), "the database was not built by the migrations"
        return compare_metadata(context, metadata)

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def test_migrations_match_the_models(database_url: str) -> None:
    assert await drift(database_url, Base.metadata) == []


async def test_a_column_missing_from_the_migrations_is_drift(database_url: str) -> None:
    models = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(models)
    models.tables["users"].append_column(Column("nickname", String(50)))
    assert [(d[0], d[2], d[3].name) for d in await drift(database_url, models)] == [("add_column", "users", "nickname")]
