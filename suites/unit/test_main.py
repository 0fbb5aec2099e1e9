"""main.py: a served worker freezes what start-up built out of the collector's scans; an app in a test does not."""

from __future__ import annotations

import gc

import pytest
from asgi_lifespan import LifespanManager

from creditgate.catalog.service import Catalog
from creditgate.main import create_app
from creditgate.settings import Settings


@pytest.mark.parametrize("freeze", [False, True])
async def test_gc_freeze_only_when_asked(cg_settings: Settings, cg_catalog: Catalog, freeze: bool) -> None:
    gc.unfreeze()
    try:
        async with LifespanManager(create_app(cg_settings, catalog=cg_catalog, freeze_gc=freeze)):
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()  # this test process builds many apps: nothing stays out of the collector's reach
