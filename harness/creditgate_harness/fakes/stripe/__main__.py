"""Run the fake Stripe as a real server: ``python -m creditgate_harness.fakes.stripe --port 9200``."""

from __future__ import annotations

import argparse

import uvicorn

from creditgate_harness.fakes.stripe.app import FakeStripe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--api-key", default=None, help="the secret key it accepts (default: any sk_test_ key)")
    args = parser.parse_args()
    uvicorn.run(FakeStripe(api_key=args.api_key).app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
