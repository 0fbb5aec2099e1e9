"""What a running gateway holds: settings, engine, sessions, catalog, upstream HTTP client."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from creditgate.auth.oidc import OidcVerifier
from creditgate.cache import Caches
from creditgate.catalog.service import Catalog
from creditgate.ledger.fast import PostgresLedger
from creditgate.providers.pool import ProviderPool
from creditgate.quotas.service import Quotas
from creditgate.settings import Settings


@dataclass(slots=True)
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    catalog: Catalog
    http: httpx.AsyncClient
    providers: ProviderPool
    quotas: Quotas
    caches: Caches
    fast_ledger: PostgresLedger | None = None  # Postgres: each money step in one round trip
    redis: Redis | None = None
    stripe: stripe.StripeClient | None = None
    oidc: OidcVerifier | None = None
    integrations: httpx.AsyncClient | None = None  # identity providers, notification receivers
