"""Upstream storms: faults mixed into a fake provider's answers for a while.

``provider.storm(Fault.status_code(503), rate=0.5, seconds=3)`` fails half the calls for three seconds;
``provider.storm({Fault.status_code(503): 0.2, Fault.hang(5): 0.05, Fault.cut_stream(2): 0.05}, calls=100)``
mixes several faults by their share of calls. The shares are kept exactly (within one call) and spread evenly —
with a ``seed``, each call draws at random instead. A call the script (``push``) covers is not the storm's; every
other call during the storm gets one of its faults or the provider's ``default``. On a server the same storm is
``POST /_fake/storm`` (``FakeProviderClient.storm`` sends it).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditgate_harness.fakes.providers.app import Fault


@dataclass
class Storm:
    """One storm: its ``faults`` with their shares of calls, how long it lasts, and what it gave so far.

    ``given`` counts each fault handed out, ``passed`` the calls it let through to the default; ``active`` turns
    false after ``seconds`` (from its start) or ``calls`` calls, on ``end()``, or when its ``with`` block ends."""

    faults: tuple[tuple[Fault, float], ...]
    seconds: float | None = None
    calls: int | None = None
    seed: int | None = None
    given: Counter[Fault] = field(default_factory=Counter)
    passed: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: bool = False
    _random: random.Random | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        total = sum(share for _, share in self.faults)
        if not self.faults:
            raise ValueError("a storm needs at least one fault")
        if any(not 0 < share <= 1 for _, share in self.faults):
            raise ValueError(f"storm shares {[s for _, s in self.faults]}: each share must be > 0 and <= 1")
        if total > 1 + 1e-9:
            raise ValueError(
                f"storm shares add up to {total:g}: a call gets at most one fault, so make them add up to 1 or less"
            )
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds={self.seconds}: a storm lasts a positive time (or None: until ended)")
        if self.calls is not None and self.calls < 1:
            raise ValueError(f"calls={self.calls}: a storm covers at least one call (or None: until ended)")
        if self.seed is not None:
            self._random = random.Random(self.seed)

    @classmethod
    def of(
        cls,
        faults: Fault | Mapping[Fault, float],
        *,
        rate: float | None = None,
        seconds: float | None = None,
        calls: int | None = None,
        seed: int | None = None,
    ) -> Storm:
        """One fault at ``rate`` (default 1: every call), or a ``{fault: share}`` mapping (then no ``rate``)."""
        if isinstance(faults, Mapping):
            if rate is not None:
                raise ValueError("rate= is for a single fault; with a {fault: share} mapping each fault has its share")
            mix = tuple(faults.items())
        else:
            mix = ((faults, 1.0 if rate is None else rate),)
        return cls(mix, seconds=seconds, calls=calls, seed=seed)

    @property
    def decided(self) -> int:
        """Calls the storm answered so far (with a fault or by letting them through)."""
        return sum(self.given.values()) + self.passed

    @property
    def active(self) -> bool:
        if self.ended:
            return False
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds:
            return False
        return self.calls is None or self.decided < self.calls

    def next(self) -> Fault | None:
        """The fault the next call gets, or ``None``: the call is let through (the storm must be ``active``)."""
        if self._random is not None:
            draw, upto = self._random.random(), 0.0
            choice: Fault | None = None
            for fault, share in self.faults:
                upto += share
                if draw < upto:
                    choice = fault
                    break
        else:  # the option furthest behind its share after this call (ties: the first listed; faults before passing)
            n = self.decided + 1
            behind = [(n * share - self.given[fault], i, fault) for i, (fault, share) in enumerate(self.faults)]
            best = max(behind, key=lambda t: (t[0], -t[1]))
            rest = 1 - sum(share for _, share in self.faults)
            choice = best[2] if best[0] >= n * rest - self.passed - 1e-9 else None
        if choice is None:
            self.passed += 1
        else:
            self.given[choice] += 1
        return choice

    def end(self) -> Storm:
        """End the storm now (later calls get the script or the default)."""
        self.ended = True
        return self

    def __enter__(self) -> Storm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def as_json(self) -> dict[str, Any]:
        """What ``GET /_fake/storm`` answers: each fault with its share and count, the calls let through."""
        return {
            "faults": [
                {"fault": fault.as_json(), "share": share, "given": self.given[fault]} for fault, share in self.faults
            ],
            "passed": self.passed,
            "active": self.active,
            "seconds": self.seconds,
            "calls": self.calls,
            "seed": self.seed,
        }
