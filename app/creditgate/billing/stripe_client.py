"""The official ``stripe`` SDK, configured from settings (base URL overridable for fakes and proxies)."""

from __future__ import annotations

import stripe

from creditgate.errors import InvalidRequest, PaymentProviderError, ServiceUnavailable
from creditgate.settings import Settings


def build_client(settings: Settings) -> stripe.StripeClient | None:
    if not settings.stripe_secret_key:
        return None
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses=base,  # type: ignore[arg-type]
        http_client=stripe.HTTPXClient(timeout=20),
        max_network_retries=2,
    )


def require(client: stripe.StripeClient | None) -> stripe.StripeClient:
    if client is None:
        raise ServiceUnavailable("billing is not configured: set CREDITGATE_STRIPE_SECRET_KEY")
    return client


def translate(exc: stripe.StripeError) -> Exception:
    """Stripe's errors → ours: a request Stripe refused is the caller's 400-class problem, the rest a 502."""
    message = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.InvalidRequestError):
        return InvalidRequest(f"Stripe refused the request: {message}", stripe_code=exc.code)
    return PaymentProviderError(f"Stripe is unavailable or refused our credentials: {message}")
