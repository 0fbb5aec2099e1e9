"""What a running gateway holds: settings, engine, sessions, catalog, upstream HTTP client."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import stripe
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth.oidc import OidcVerifier
from app.catalog.service import Catalog
from app.providers.router import ProviderPool
from app.quotas.service import Quotas
from app.settings import Settings


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
