"""The ASGI app (`metering.web:app`): Checkout, Stripe webhooks, read API, health, metrics."""

from metering.web.app import create_app

app = create_app(configure_logs=True)

__all__ = ["app", "create_app"]
