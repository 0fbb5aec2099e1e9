"""``create_app(settings)``: the gateway's FastAPI application, built explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.config
import os
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
from creditgate.ledger.sweeper import run_forever, sweep_once
from creditgate.llm.images import router as images_router
from creditgate.llm.lean import LeanApp
from creditgate.llm.messages import router as messages_router
from creditgate.llm.models import router as models_router
from creditgate.llm.routes import router as llm_router
from creditgate.notifications.delivery import deliver_forever
from creditgate.notifications.routes import router as notifications_router
from creditgate.observability import logs, metrics, upstream
from creditgate.observability import routes as metrics_routes
from creditgate.observability.middleware import ObservabilityMiddleware
from creditgate.orgs.routes import router as orgs_router
from creditgate.providers.pool import ProviderPool
from creditgate.providers.transport import CONNECT_TIMEOUT_SECONDS, providers_transport, whole_post
from creditgate.quotas.service import MemoryCounter, Quotas, RedisCounter, load_plans
from creditgate.runtime import Runtime
from creditgate.settings import Settings
from creditgate.system import demo, startup
from creditgate.system.routes import router as system_router
from creditgate.system.startup import StartupError
from creditgate.users.routes import router as user_router

log = logging.getLogger(__name__)


class NotMigrated(StartupError):
    """The database's schema is not the one this code expects."""


def load_catalog(settings: Settings) -> Catalog:
    """The configured catalog (``StartupError`` if it is missing or broken); ``--demo`` routes it to the fake."""
    catalog = startup.load_catalog(settings.catalog)
    return demo.route_catalog(catalog) if settings.demo else catalog


def create_app(
    settings: Settings | None = None,
    *,
    catalog: Catalog | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """Build the gateway. ``upstream_transport`` routes every provider call (tests point it at fakes).

    ``freeze_gc``: once started, move everything start-up built to the collector's permanent generation
    (``gc.freeze()``), so full collections stop scanning it (−200 µs CPU per request, docs/benchmarks.md). For a
    process that serves one app (``create_app_from_env``); not for a test process that builds many."""
    settings = settings or Settings()
    catalog = catalog or load_catalog(settings)
    if settings.demo:
        settings = demo.with_stripe(settings)
        if upstream_transport is None:
            upstream_transport = demo.upstream_transport()
    upstream_transport = upstream_transport or providers_transport(settings)
    if settings.metrics_enabled:  # time every provider call from the outside
        upstream_transport = upstream.TimedTransport(upstream_transport, catalog)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        try:
            try:
                startup.check_multiprocess_dir()
                revision = await current_revision(engine)
            except Exception as exc:
                app.state.startup_error = startup.explain(exc, database_url=settings.database_url)
                raise
            if revision != head_revision():
                not_migrated = NotMigrated(
                    "CREDITGATE_DATABASE_URL",
                    f"database at revision {revision or 'none'}, this code expects {head_revision()}",
                    "run `creditgate migrate` (or `creditgate serve`, which migrates first)",
                )
                app.state.startup_error = not_migrated
                raise not_migrated
            http = httpx.AsyncClient(
                transport=upstream_transport,
                timeout=httpx.Timeout(settings.upstream_timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS),
            )
            # Identity providers and notification receivers: real HTTP, never the upstream transport.
            integrations = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
            redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
            caches = cache.Caches(settings.cache_seconds)
            fast_ledger = None
            if settings.fast_ledger and not is_sqlite(settings.database_url):
                fast_ledger = await PostgresLedger.connect(
                    settings.database_url,
                    size=settings.db_pool_size,
                    batch=settings.group_commit,
                    async_hold=settings.hold_async_commit,
                )
            providers = ProviderPool(
                http,
                catalog,
                threshold=settings.breaker_threshold,
                cooldown=settings.breaker_cooldown_seconds,
                transport=upstream_transport,
                post=whole_post(upstream_transport),
            )
            if settings.metrics_enabled:
                upstream.watch_breakers(providers.breakers, catalog)
            app.state.runtime = Runtime(
                settings=settings,
                engine=engine,
                sessionmaker=create_sessionmaker(engine),
                catalog=catalog,
                http=http,
                providers=providers,
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
            try:  # holds that expired while no worker ran, released before the first request is served
                await sweep_once(app.state.runtime.sessionmaker)
            except Exception:
                log.exception("the hold sweep at start failed; the next round retries")
            tasks = [
                asyncio.create_task(
                    run_forever(app.state.runtime.sessionmaker, interval=settings.sweep_interval_seconds)
                )
            ]
            if settings.notify_webhook_url:
                tasks.append(asyncio.create_task(deliver_forever(app.state.runtime)))
            if not is_sqlite(settings.database_url):  # other workers' changes reach this one's caches
                tasks.append(asyncio.create_task(cache.listen(settings.database_url)))
            if freeze_gc:  # what start-up built (modules, the app, the catalog, pools) lives as long as the worker
                gc.collect()
                gc.freeze()
            metrics_server = None
            if settings.metrics_enabled and settings.metrics_port:
                metrics_server = await metrics_routes.serve_on_port(
                    app.state.runtime, host=settings.metrics_host, port=settings.metrics_port
                )
            try:
                yield
            finally:
                if metrics_server is not None:
                    metrics_server.close()
                metrics.worker_exited(os.getpid())
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

    app = LeanApp(
        title="creditgate",
        version=app_pkg.__version__,
        description="An LLM gateway with prepaid fractional credits. Credits are decimal strings.",
        lifespan=lifespan,
        telemetry={"tracing": settings.otel_enabled, "metrics": settings.otel_enabled, "logs": settings.otel_enabled},
    )
    errors_http.install(app)
    app.add_middleware(ObservabilityMiddleware, metrics_enabled=settings.metrics_enabled)
    app.add_middleware(startup.StartupErrorMiddleware, debug=settings.log_level == "debug")
    if settings.metrics_enabled and not settings.metrics_port:
        app.include_router(metrics_routes.router)
    if settings.demo and settings.stripe_api_base == settings.public_url.rstrip("/") + demo.STRIPE_PATH:
        app.mount(demo.STRIPE_PATH, demo.stripe_app(settings))
    # The inference routes first: Starlette matches a request against the routes in order.
    for router in (
        llm_router,
        messages_router,
        images_router,
        models_router,
        system_router,
        catalog_router,
        user_router,
        byok_router,
        orgs_router,
        billing_router,
        admin_router,
        integrations_router,
        notifications_router,
    ):
        app.include_router(router)
    if not settings.otel_enabled:  # OpenTelemetry's spans need FastAPI's own handling of every request
        app.serve_lean((llm_router, messages_router, images_router), metrics_enabled=settings.metrics_enabled)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: logging from the settings, and a bad setting
    or catalog is one logged line and exit code 2 (the traceback too at log level debug)."""
    try:
        settings = startup.load_settings()
        logging.config.dictConfig(logs.logging_config(fmt=settings.log_format, level=settings.log_level))
        return create_app(settings, freeze_gc=True)
    except startup.StartupError as exc:
        debug = os.environ.get("CREDITGATE_LOG_LEVEL", "").lower() == "debug"
        logging.getLogger("uvicorn.error").error("%s", exc, exc_info=debug)
        raise SystemExit(2) from None
