"""Serving reads the two revisions without Alembic; they must be Alembic's answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from creditgate.db.engine import create_engine
from creditgate.db.migrate import MIGRATIONS, _revisions, current_revision, head_revision


def test_the_head_is_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_script_annotated_or_chained_is_read_too(tmp_path: Path) -> None:
    script = tmp_path / "0010_x.py"
    script.write_text('"""doc"""\nfrom alembic import op\nrevision: str = "0010"\ndown_revision = x = "0009"\n')
    assert _revisions(script) == ("0010", "0009")


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
async def test_the_databases_revision_is_alembics(database_url: str, tmp_path: Path) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
    empty = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", pool_size=1)
    try:
        assert await current_revision(empty) is None
    finally:
        await empty.dispose()


def test_serving_does_not_load_alembic() -> None:
    code = "import sys, creditgate.main; sys.exit('alembic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
