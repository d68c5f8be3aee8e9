"""The Stripe API client, built from settings (`STRIPE_API_BASE` points it at a local stand-in)."""

from collections.abc import Awaitable, Callable

import stripe

from metering.errors import ConfigurationError
from metering.ops.settings import Settings

MAX_NETWORK_RETRIES = 2
"""Stripe's client retries a failed call with an idempotency key, so a retry never doubles."""
TIMEOUT_S = 20


def create_http_client() -> stripe.HTTPXClient:
    """The async HTTP client under a `StripeClient`; its owner closes it (`close_async`)."""
    return stripe.HTTPXClient(timeout=TIMEOUT_S)


def create_client(settings: Settings, http_client: stripe.HTTPXClient) -> stripe.StripeClient:
    """A `StripeClient` for the configured secret key; `ConfigurationError` without one."""
    api_key = settings.stripe_secret_key.get_secret_value()
    if not api_key:
        raise ConfigurationError("STRIPE_SECRET_KEY is not set", code="stripe_not_configured")
    api_base = settings.stripe_api_base
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base.rstrip("/")} if api_base else None,
        max_network_retries=MAX_NETWORK_RETRIES,
        http_client=http_client,
    )


async def close_http_client(http_client: stripe.HTTPXClient) -> None:
    close: Callable[[], Awaitable[None]] = http_client.close_async
    await close()
