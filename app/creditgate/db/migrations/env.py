"""Alembic environment: always given a live connection by ``app.db.migrate``."""

from __future__ import annotations

from alembic import context

from creditgate.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the plain `alembic` CLI
    raise RuntimeError("run migrations with `creditgate migrate` (app.db.migrate.upgrade)")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
