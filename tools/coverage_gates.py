"""Per-module coverage gates (coverage.py has none: coveragepy #691). Reads coverage.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The money modules: where a credit is computed, held, settled or written.
GATES = {
    "creditgate/money.py": 95.0,
    "creditgate/ledger/service.py": 95.0,
    "creditgate/ledger/repository.py": 95.0,
    "creditgate/catalog/pricing.py": 95.0,
    "creditgate/llm/relay.py": 95.0,
    "creditgate/llm/metering.py": 95.0,
    "creditgate/billing/webhooks.py": 95.0,
    "creditgate/quotas/service.py": 95.0,
}


def main(path: str = "coverage.json") -> int:
    files = json.loads(Path(path).read_text())["files"]
    failed = False
    for module, minimum in GATES.items():
        # Paths are as measured (app/creditgate/… in this repo, site-packages/creditgate/… when installed).
        found = [data["summary"] for path, data in files.items() if path.replace("\\", "/").endswith(module)]
        summary = found[0] if found else None
        covered = summary["percent_covered"] if summary else 0.0
        ok = covered >= minimum
        failed |= not ok
        print(f"{'ok  ' if ok else 'FAIL'} {module}: {covered:.1f}% (gate {minimum:.0f}%)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
