"""Run the fake provider as a real server: ``python -m creditgate_harness.fakes.providers --port 9100``."""

from __future__ import annotations

import argparse

import uvicorn

from creditgate_harness.fakes.providers.app import FakeProvider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(FakeProvider().app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
