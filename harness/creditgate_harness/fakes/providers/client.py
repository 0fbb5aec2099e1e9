"""Drive a fake provider that runs in another process (``python -m creditgate_harness.fakes.providers``).

In-process and in-thread fakes are scripted on their state directly (``fake.state.push(…)``,
``fake.state.storm(…)``); a fake on a port of another process is scripted over its ``/_fake`` endpoints, with
the same arguments, through ``FakeProviderClient(url)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from creditgate_harness.fakes.providers.app import Fault, Reply


class FakeProviderClient:
    """The ``/_fake`` endpoints of a fake provider at ``url`` (its base, without ``/v1``), as methods."""

    def __init__(self, url: str, *, timeout: float = 30) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def push(self, *steps: Reply | Fault) -> int:
        """Queue what the next calls get, in order; the number of steps queued."""
        body = [step.as_json() if isinstance(step, Fault) else {"reply": _reply_json(step)} for step in steps]
        queued: int = self._post("/_fake/script", body)["queued"]
        return queued

    def clear_script(self) -> int:
        """Drop every queued step; the number dropped."""
        dropped: int = self._http.delete("/_fake/script").raise_for_status().json()["dropped"]
        return dropped

    def storm(
        self,
        faults: Fault | Mapping[Fault, float],
        *,
        rate: float | None = None,
        seconds: float | None = None,
        calls: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """``FakeProvider.storm`` on the server; its ``Storm.as_json()``."""
        if isinstance(faults, Mapping):
            if rate is not None:
                raise ValueError("rate= is for a single fault; with a {fault: share} mapping each fault has its share")
            mix = list(faults.items())
        else:
            mix = [(faults, 1.0 if rate is None else rate)]
        body = {
            "faults": [{**fault.as_json(), "share": share} for fault, share in mix],
            "seconds": seconds,
            "calls": calls,
            "seed": seed,
        }
        state: dict[str, Any] = self._post("/_fake/storm", body)
        return state

    def storm_state(self) -> dict[str, Any] | None:
        """The current (or last) storm's ``as_json()``, or ``None``."""
        state: dict[str, Any] | None = self._http.get("/_fake/storm").raise_for_status().json()
        return state

    def end_storm(self) -> dict[str, Any] | None:
        """End the storm; what it gave (``None`` if there was none)."""
        state: dict[str, Any] | None = self._http.delete("/_fake/storm").raise_for_status().json()
        return state

    def served(self, since: int = 0) -> list[dict[str, Any]]:
        """The chat completions served (``ServedCompletion.as_json()``), skipping the first ``since``."""
        rows: list[dict[str, Any]] = self._http.get("/_fake/served", params={"since": since}).raise_for_status().json()
        return rows

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: Any) -> Any:
        response = self._http.post(path, json=body)
        if response.status_code == 422:
            raise ValueError(f"the fake provider at {self.url} refused {path}: {response.json()['error']['message']}")
        return response.raise_for_status().json()


def _reply_json(reply: Reply) -> dict[str, Any]:
    return {name: getattr(reply, name) for name in reply.__slots__}
