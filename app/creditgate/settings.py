"""Gateway settings, read from the environment with the ``CREDITGATE_`` prefix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from cryptography.fernet import Fernet
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from creditgate.money import check_increment


class Settings(BaseSettings):
    """Everything the gateway reads at start-up; built explicitly and passed to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="CREDITGATE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./creditgate.db",
        description="postgresql+asyncpg://… or sqlite+aiosqlite:///… (postgres:// and postgresql:// mean asyncpg)",
    )
    redis_url: str | None = Field(default=None, description="redis://HOST:6379/0 for quota counters shared by workers")
    redis_key_prefix: str = Field(default="", description="prefix of every Redis key (several gateways on one Redis)")
    margin: Decimal = Field(default=Decimal("1.5"), gt=0, description="multiplier on vendor cost")
    credit_value_usd: Decimal = Field(default=Decimal("0.01"), gt=0, description="$ per credit")
    default_credit_increment: Decimal = Decimal("0.1")
    catalog: Path | None = Field(default=None, description="JSON catalog file; the built-in one if unset")
    hold_ttl_seconds: int = Field(default=600, ge=30)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    upstream_timeout_seconds: float = Field(default=120.0, gt=0)
    # The largest request body any route reads (413 above it): a 20 MB body is parsed and walked otherwise.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    upstream_client: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="the providers' connection pool: aiohttp (httpx-aiohttp's transport) or httpx's own",
    )
    upstream_max_connections: int = Field(default=1000, ge=1, description="open connections to all providers")
    default_max_tokens: int = Field(default=4096, ge=1)
    demo: bool = False
    db_pool_size: int = Field(default=20, ge=1)
    fast_ledger: bool = Field(default=True, description="Postgres: each money step as one SQL function call")
    group_commit: bool = Field(
        default=True,
        description="Postgres: the holds (and settles) waiting at one moment share one transaction",
    )
    hold_async_commit: bool = Field(
        default=True,
        description="Postgres (fast ledger): a hold commits without waiting for the disk; the settle's durable commit "
        "makes it durable, and a crash in between loses the hold, which the settle then charges from the balance",
    )
    cache_seconds: float = Field(
        default=5.0, ge=0, description="the most a cached key, plan, BYOK key or increment may lag a change (0: off)"
    )
    public_url: str = Field(
        default="http://localhost:8000", description="where clients reach this gateway (the demo's checkout page)"
    )

    # Operations: logs and Prometheus metrics.
    log_format: Literal["text", "json"] = Field(default="text", description="text, or json: one object per line")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    metrics_enabled: bool = Field(default=True, description="serve GET /metrics and record metrics")
    otel_enabled: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry (spans, metrics and logs to the global providers); off by default: "
        "/metrics covers it, and FastAPI's check for providers costs ~4 % of a chat request's CPU",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve /metrics on this port instead of the gateway's"
    )
    metrics_host: str = Field(default="127.0.0.1", description="the address the metrics port listens on")

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

    # OIDC (e.g. Keycloak: https://sso.example.com/realms/acme). Without an issuer only API keys sign in.
    oidc_issuer: str | None = None
    oidc_audience: str | None = Field(default=None, description="the aud tokens must carry (Keycloak: the client id)")
    oidc_roles_claim: str = Field(default="realm_access.roles", description="dotted path to the roles list")
    oidc_admin_role: str = "creditgate-admin"
    oidc_leeway_seconds: int = Field(default=30, ge=0, le=300)
    oidc_jwks_ttl_seconds: int = Field(default=600, ge=0)

    # Lago subscription webhooks: the HMAC key (Lago's API key) and/or the RS256 public key (PEM).
    lago_hmac_key: str | None = Field(default=None, repr=False)
    lago_public_key: str | None = None
    lago_issuer: str = "https://api.getlago.com"
    lago_plan_map: dict[str, str] = Field(
        default_factory=dict, description='Lago plan code → plan, e.g. {"pro": "professional"}'
    )

    # Telegram Mini App sign-in: the bot's token; initData older than the max age is refused.
    telegram_bot_token: str | None = Field(default=None, repr=False)
    telegram_max_age_seconds: int = Field(default=3600, gt=0)
    telegram_key_ttl_seconds: int = Field(default=3600, gt=0)

    # Notifications: delivered to this URL, signed with the secret; a balance below the threshold notifies.
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = Field(default=None, repr=False)
    notify_low_balance: Decimal = Field(default=Decimal(100), ge=0)
    notify_poll_seconds: float = Field(default=1.0, gt=0)
    notify_max_attempts: int = Field(default=12, gt=0)
    notify_timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _oidc_needs_an_audience(self) -> Settings:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError(
                "CREDITGATE_OIDC_AUDIENCE is required with CREDITGATE_OIDC_ISSUER (tokens' aud is checked)"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep:
            raise ValueError(
                "not a database URL — use postgresql+asyncpg://USER@HOST:5432/DB or sqlite+aiosqlite:///FILE"
            )
        # Heroku-style and libpq URLs name no driver; the gateway only speaks asyncpg and aiosqlite.
        aliases = {"postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
        scheme = aliases.get(scheme, scheme)
        if scheme not in {"postgresql+asyncpg", "sqlite+aiosqlite"}:
            raise ValueError(f"unsupported scheme {scheme}:// — use postgresql+asyncpg://… or sqlite+aiosqlite:///…")
        return f"{scheme}://{rest}"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("not a Redis URL — use redis://HOST:6379/0 (or rediss://, unix://)")
        return value or None

    @field_validator("byok_encryption_key")
    @classmethod
    def _fernet_key(cls, value: str | None) -> str | None:
        if value:
            try:
                Fernet(value)
            except ValueError:
                raise ValueError(
                    "not a Fernet key — generate one: python -c "
                    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
                ) from None
        return value or None

    @field_validator("default_credit_increment")
    @classmethod
    def _increment_allowed(cls, value: Decimal) -> Decimal:
        return check_increment(value)
