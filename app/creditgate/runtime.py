"""What a running gateway holds: settings, engine, sessions, catalog, upstream HTTP client."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from creditgate.auth.oidc import OidcVerifier
from creditgate.catalog.service import Catalog
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
    redis: Redis | None = None
    stripe: stripe.StripeClient | None = None
    oidc: OidcVerifier | None = None
    integrations: httpx.AsyncClient | None = None  # identity providers, notification receivers
