"""The app factory: routers, clients opened at start-up, and JSON errors.

Every error answers `{"error": {"code": ..., "message": ...}}`; messages never carry a secret.
Routers live in their own modules and are added here.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from metering.accounts import NotFound
from metering.db import create_engine, make_sessionmaker
from metering.errors import ConfigurationError, MeteringError, PermanentError
from metering.logs import configure_logging, get_logger, redact_text
from metering.pricing import PricingError
from metering.reports import InvalidQuery
from metering.settings import Settings, get_settings
from metering.stripe import checkout as stripe_checkout
from metering.stripe.client import close_http_client, create_client, create_http_client
from metering.stripe.webhooks import InvalidWebhook
from metering.web import checkout, experiments, health, users, webhooks
from metering.web.auth import Unauthorized
from metering.web.deps import Enqueue, WebState
from metering.web.metrics import router as metrics_router

log = get_logger(__name__)


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
    app.include_router(experiments.router)
    app.include_router(health.router)
    app.add_exception_handler(MeteringError, _metering_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def _status_of(error: MeteringError) -> int:
    if isinstance(error, Unauthorized):
        return 401
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, InvalidWebhook):
        return 400
    if isinstance(error, stripe_checkout.InvalidPurchase | stripe_checkout.UnknownPack):
        return 422
    if isinstance(error, InvalidQuery | PricingError):
        return 422
    if isinstance(error, stripe_checkout.StripeRequestFailed):
        return 503 if error.unavailable else 502
    if isinstance(error, ConfigurationError):
        return 503
    if isinstance(error, PermanentError):
        return 400
    return 503


def _error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": redact_text(message), **extra}}


async def _metering_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, MeteringError)
    status = _status_of(error)
    log.info("request refused", path=request.url.path, status=status, code=error.code)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(_error_body(error.code, error.message), status, headers=headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [
        {"loc": list(item.get("loc", ())), "message": item.get("msg", "")}
        for item in error.errors()
    ]
    message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['message']}" for d in details)
    return JSONResponse(_error_body("invalid_request", message, details=details), 422)
