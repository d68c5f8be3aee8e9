"""The app factory: routers, clients opened at start-up, and the JSON error handlers.

Every error answers `{"error": {"code": ..., "message": ...}}` (`metering.web.errors`). Routers
live in their own modules and are added here.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.logs import configure_logging
from metering.ops.settings import Settings, get_settings
from metering.stripe.client import close_http_client, create_client, create_http_client
from metering.web import checkout, errors, experiments, grants, health, users, webhooks
from metering.web.deps import Enqueue, WebState
from metering.web.metrics import router as metrics_router


def create_app(
    settings: Settings | None = None,
    enqueue: Enqueue | None = None,
    *,
    configure_logs: bool = False,
) -> FastAPI:
    """The ASGI app; `settings` default to the environment's, `enqueue` to the Celery task.

    With `configure_logs`, start-up routes every log line through the redacting JSON renderer.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config = settings or get_settings()
        if configure_logs:
            configure_logging(config.metering_log_level, json=config.metering_log_json)
        engine = create_engine(config.database_url)
        http_client = create_http_client()
        stripe_client = (
            create_client(config, http_client)
            if config.stripe_secret_key.get_secret_value()
            else None
        )
        app.state.web = WebState(
            settings=config,
            sessions=make_sessionmaker(engine),
            enqueue=enqueue or webhooks.enqueue_with_celery,
            stripe_client=stripe_client,
        )
        try:
            yield
        finally:
            await close_http_client(http_client)
            await engine.dispose()

    app = FastAPI(title="metering", lifespan=lifespan)
    app.include_router(checkout.router)
    app.include_router(webhooks.router)
    app.include_router(metrics_router)
    app.include_router(users.router)
    app.include_router(grants.router)
    app.include_router(experiments.router)
    app.include_router(health.router)
    errors.install(app)
    return app
