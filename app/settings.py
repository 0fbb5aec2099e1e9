"""Gateway settings, read from the environment with the ``CREDITGATE_`` prefix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.money import check_increment


class Settings(BaseSettings):
    """Everything the gateway reads at start-up; built explicitly and passed to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="CREDITGATE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./creditgate.db"
    redis_url: str | None = None
    margin: Decimal = Field(default=Decimal("1.5"), gt=0, description="multiplier on vendor cost")
    credit_value_usd: Decimal = Field(default=Decimal("0.01"), gt=0, description="$ per credit")
    default_credit_increment: Decimal = Decimal("0.1")
    catalog: Path | None = Field(default=None, description="JSON catalog file; the built-in one if unset")
    hold_ttl_seconds: int = Field(default=600, ge=30)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    upstream_timeout_seconds: float = Field(default=120.0, gt=0)
    default_max_tokens: int = Field(default=4096, ge=1)
    demo: bool = False
    db_pool_size: int = Field(default=20, ge=1)

    breaker_threshold: int = Field(default=5, ge=1, description="consecutive failures that open a provider's circuit")
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    default_plan: str = Field(default="trial", description="plan for users and orgs with no subscription")
    byok_encryption_key: str | None = Field(default=None, repr=False, description="Fernet key for stored BYOK keys")

    # Billing (Stripe). Without a secret key the billing routes answer 503.
    stripe_secret_key: str | None = Field(default=None, repr=False)
    stripe_webhook_secret: str | None = Field(default=None, repr=False)
    stripe_api_base: str | None = Field(default=None, description="point the SDK elsewhere (a fake, a proxy)")
    checkout_success_url: str = "http://localhost:8000/billing/success?session_id={CHECKOUT_SESSION_ID}"
    checkout_cancel_url: str = "http://localhost:8000/billing/cancel"
    portal_return_url: str = "http://localhost:8000/"
    min_topup_usd: Decimal = Field(default=Decimal(1), gt=0)
    max_topup_usd: Decimal = Field(default=Decimal(10_000), gt=0)

    @field_validator("default_credit_increment")
    @classmethod
    def _increment_allowed(cls, value: Decimal) -> Decimal:
        return check_increment(value)
