"""Load any credits app through its adapter and judge the money: ``python -m creditgate_harness.load``.

    python -m creditgate_harness.load --adapter wallet_load:WalletAdapter --target http://127.0.0.1:8000 \\
        --fake-upstream http://127.0.0.1:9100 --fake-stripe http://127.0.0.1:9200 --webhook-secret whsec_x

``--adapter module:Class`` is imported from the current directory (or PYTHONPATH) and built with ``target=`` and
every ``--option name=value``. ``--fake-upstream``/``--fake-stripe``: the fakes the app is wired to (its
OPENAI_BASE_URL and Stripe base point at them); with the first the money oracle judges each account's books against
what the upstream served and Stripe was paid, with the second load users also top up. Exit code 0: passed.
Needs locust: ``pip install 'creditgate-harness[load]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import uuid
from datetime import UTC, datetime

from creditgate_harness.load.adapter import load_adapter
from creditgate_harness.load.runner import add_run_options, ceilings_for, report, run_against


def option(value: str) -> tuple[str, str]:
    """``name=value``."""
    name, sep, given = value.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--option {value!r}: write it as name=value (a keyword of the adapter)")
    return name, given


def main(argv: list[str] | None = None) -> int:
    """The command line; its exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m creditgate_harness.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--adapter", required=True, help="module:Class of the app's LoadAdapter")
    parser.add_argument("--target", required=True, help="the app's base URL")
    parser.add_argument("--option", type=option, action="append", default=[], help="name=value for the adapter")
    parser.add_argument("--fake-upstream", help="the fake provider the app is wired to (the money oracle's input)")
    parser.add_argument("--fake-stripe", help="the fake Stripe the app is wired to (top-ups; the oracle's payments)")
    parser.add_argument("--webhook-secret", default="whsec_load", help="the app's Stripe webhook signing secret")
    parser.add_argument("--require-oracle", action="store_true", help="a run without the money oracle fails")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("locust") is None:
        print(f"load: FAILED: locust is not installed for {sys.executable}: pip install 'creditgate-harness[load]'")
        return 1
    options = dict(args.option)
    target = args.target.rstrip("/")
    try:
        adapter = load_adapter(args.adapter, {"target": target, **options})
    except ValueError as exc:
        parser.error(str(exc))
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    args.run_id = args.run_id or stamp.replace("T", "").replace("Z", "").lower()
    out = args.out / stamp
    out.mkdir(parents=True)
    ceilings = ceilings_for(out, args)
    result = run_against(
        out,
        adapter=adapter,
        spec=args.adapter,
        target=target,
        args=args,
        options=options,
        upstream=args.fake_upstream,
        stripe=args.fake_stripe,
    )
    return report(
        out, result, args=args, ceilings=ceilings, where=f"target {target}", oracle_required=args.require_oracle
    )


if __name__ == "__main__":
    sys.exit(main())
