"""``creditgate serve --demo``: the whole money loop with no configuration and no network.

The catalog's models are all served by the harness's fake LLM upstream (in-process), and the harness's fake
Stripe is mounted at ``/demo/stripe``: the gateway's own Stripe SDK talks to it over HTTP as it would to
Stripe, ``POST /billing/checkout`` returns its hosted-checkout page, and pressing Pay there completes the
session and delivers the signed ``checkout.session.completed`` webhook to ``/billing/webhook``.
"""

from __future__ import annotations

import httpx
from starlette.types import ASGIApp

from creditgate.catalog.service import Catalog
from creditgate.settings import Settings

UPSTREAM_URL = "http://demo-upstream.invalid/v1"
STRIPE_PATH = "/demo/stripe"
STRIPE_KEY = "sk_test_creditgate_demo"
STRIPE_WEBHOOK_SECRET = "whsec_creditgate_demo"  # noqa: S105 - the demo's fake Stripe, in-process
DATABASE_URL = "sqlite+aiosqlite:///./creditgate-demo.db"
EMAIL = "demo@creditgate.local"


def route_catalog(catalog: Catalog) -> Catalog:
    return catalog.routed_to_single_upstream(name="demo", base_url=UPSTREAM_URL, api_key="demo")


def upstream_transport() -> httpx.AsyncBaseTransport:
    """The harness's fake provider, in-process."""
    from creditgate_harness.fakes.providers import FakeProvider

    return httpx.ASGITransport(app=FakeProvider(bill_everything=True).app)  # bills every part, as vendors do


def with_stripe(settings: Settings) -> Settings:
    """The demo's billing settings: the fake Stripe under ``public_url`` (unless a real key is configured)."""
    if settings.stripe_secret_key:
        return settings
    base = settings.public_url.rstrip("/") + STRIPE_PATH
    return settings.model_copy(
        update={
            "stripe_secret_key": STRIPE_KEY,
            "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET,
            "stripe_api_base": base,
            "checkout_success_url": f"{base}/c/return?session_id={{CHECKOUT_SESSION_ID}}",
            "checkout_cancel_url": f"{base}/c/return?cancelled=1",
            "portal_return_url": settings.public_url,
        }
    )


def stripe_app(settings: Settings) -> ASGIApp:
    """The fake Stripe (API + hosted checkout), delivering signed webhooks to this gateway."""
    from creditgate_harness.fakes.stripe import FakeStripe

    public = settings.public_url.rstrip("/")
    fake = FakeStripe(api_key=STRIPE_KEY, public_url=public + STRIPE_PATH)
    fake.deliver_webhooks_to(f"{public}/billing/webhook", secret=STRIPE_WEBHOOK_SECRET)
    return fake.app
