"""Waiting for something another process or thread does (a delivery, a worker's write), with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(predicate: Callable[[], object], *, seconds: float = 10, every: float = 0.05, what: str = "") -> None:
    """Return once ``predicate()`` is truthy; ``AssertionError`` naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what or getattr(predicate, '__name__', 'condition')}")
        await asyncio.sleep(every)
