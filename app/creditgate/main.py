"""``create_app(settings)``: the gateway's FastAPI application, built explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis

import creditgate as app_pkg
from creditgate import cache, errors_http
from creditgate.admin.routes import router as admin_router
from creditgate.auth.oidc import OidcVerifier
from creditgate.billing.routes import router as billing_router
from creditgate.billing.stripe_client import build_client
from creditgate.byok.routes import router as byok_router
from creditgate.catalog.routes import router as catalog_router
from creditgate.catalog.service import Catalog
from creditgate.db.engine import create_engine, create_sessionmaker, is_sqlite
from creditgate.db.migrate import current_revision, head_revision
from creditgate.integrations.routes import router as integrations_router
from creditgate.ledger.fast import PostgresLedger
from creditgate.ledger.sweeper import run_forever
from creditgate.llm.images import router as images_router
from creditgate.llm.messages import router as messages_router
from creditgate.llm.models import router as models_router
from creditgate.llm.routes import router as llm_router
from creditgate.notifications.delivery import deliver_forever
from creditgate.notifications.routes import router as notifications_router
from creditgate.orgs.routes import router as orgs_router
from creditgate.providers.pool import ProviderPool
from creditgate.quotas.service import MemoryCounter, Quotas, RedisCounter, load_plans
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.system.routes import router as system_router
from creditgate.users.routes import router as user_router

log = logging.getLogger(__name__)

DEMO_UPSTREAM = "http://demo-upstream.invalid/v1"


class NotMigrated(RuntimeError):
    pass


def load_catalog(settings: Settings) -> Catalog:
    catalog = Catalog.load(settings.catalog)
    if settings.demo:
        catalog = catalog.routed_to_single_upstream(name="demo", base_url=DEMO_UPSTREAM, api_key="demo")
    return catalog


def _demo_transport() -> httpx.AsyncBaseTransport:
    # The demo's upstream is the harness's fake provider, in-process: no network, no vendor key.
    from creditgate_harness.fakes.providers import FakeProvider

    return httpx.ASGITransport(app=FakeProvider().app)


def create_app(
    settings: Settings | None = None,
    *,
    catalog: Catalog | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the gateway. ``upstream_transport`` routes every provider call (tests point it at fakes)."""
    settings = settings or Settings()
    catalog = catalog or load_catalog(settings)
    if upstream_transport is None and settings.demo:
        upstream_transport = _demo_transport()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        try:
            revision = await current_revision(engine)
            if revision != head_revision():
                raise NotMigrated(
                    f"database at revision {revision or 'none'}, code expects {head_revision()}: "
                    "run `creditgate migrate` (or `creditgate serve`, which migrates first)"
                )
            http = httpx.AsyncClient(
                transport=upstream_transport,
                timeout=httpx.Timeout(settings.upstream_timeout_seconds, connect=10.0),
            )
            # Identity providers and notification receivers: real HTTP, never the upstream transport.
            integrations = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
            redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
            caches = cache.Caches(settings.cache_seconds)
            fast_ledger = None
            if settings.fast_ledger and not is_sqlite(settings.database_url):
                fast_ledger = await PostgresLedger.connect(settings.database_url, size=settings.db_pool_size)
            app.state.runtime = Runtime(
                settings=settings,
                engine=engine,
                sessionmaker=create_sessionmaker(engine),
                catalog=catalog,
                http=http,
                providers=ProviderPool(
                    http,
                    catalog,
                    threshold=settings.breaker_threshold,
                    cooldown=settings.breaker_cooldown_seconds,
                ),
                quotas=Quotas(
                    RedisCounter(redis) if redis is not None else MemoryCounter(),
                    load_plans(),
                    settings.default_plan,
                    settings.redis_key_prefix,
                    caches.plan,
                ),
                caches=caches,
                fast_ledger=fast_ledger,
                redis=redis,
                stripe=build_client(settings),
                oidc=OidcVerifier(settings, integrations) if settings.oidc_issuer else None,
                integrations=integrations,
            )
            tasks = [
                asyncio.create_task(
                    run_forever(app.state.runtime.sessionmaker, interval=settings.sweep_interval_seconds)
                )
            ]
            if settings.notify_webhook_url:
                tasks.append(asyncio.create_task(deliver_forever(app.state.runtime)))
            if not is_sqlite(settings.database_url):  # other workers' changes reach this one's caches
                tasks.append(asyncio.create_task(cache.listen(settings.database_url)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await http.aclose()
                await integrations.aclose()
                if fast_ledger is not None:
                    await fast_ledger.close_pool()
                if redis is not None:
                    await redis.aclose()
        finally:
            await engine.dispose()

    app = FastAPI(
        title="creditgate",
        version=app_pkg.__version__,
        description="An LLM gateway with prepaid fractional credits. Credits are decimal strings.",
        lifespan=lifespan,
    )
    errors_http.install(app)
    for router in (
        system_router,
        catalog_router,
        user_router,
        byok_router,
        orgs_router,
        llm_router,
        messages_router,
        models_router,
        images_router,
        billing_router,
        admin_router,
        integrations_router,
        notifications_router,
    ):
        app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving."""
    return create_app(Settings())
