"""A stateful fake Stripe API that the real ``stripe`` SDK talks to, plus a signed webhook sender."""

from creditgate_harness.fakes.stripe.app import FakeStripe
from creditgate_harness.fakes.stripe.webhooks import StripeWebhooks, sign_payload

__all__ = ["FakeStripe", "StripeWebhooks", "sign_payload"]
