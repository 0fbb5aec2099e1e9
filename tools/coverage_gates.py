"""Per-module coverage gates (coverage.py has none: coveragepy #691). Reads coverage.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The money modules: where a credit is computed, held, settled or written.
GATES = {
    "app/money.py": 95.0,
    "app/ledger/service.py": 95.0,
    "app/ledger/repository.py": 95.0,
    "app/catalog/pricing.py": 95.0,
    "app/llm/service.py": 95.0,
    "app/llm/metering.py": 95.0,
    "app/billing/webhooks.py": 95.0,
    "app/quotas/service.py": 95.0,
}


def main(path: str = "coverage.json") -> int:
    files = json.loads(Path(path).read_text())["files"]
    failed = False
    for module, minimum in GATES.items():
        summary = files.get(module, {}).get("summary")
        covered = summary["percent_covered"] if summary else 0.0
        ok = covered >= minimum
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {module}: {covered:.1f}% (gate {minimum:.0f}%)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
