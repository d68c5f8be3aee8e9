"""What routes share: the app's settings, database sessions, Stripe client and task queue."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import stripe
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import ConfigurationError
from metering.ops.settings import Settings

Enqueue = Callable[[str], None]
"""Sends a stored Stripe event's id to the `stripe` queue; blocking, so run in a thread."""


@dataclass
class WebState:
    """Clients made at start-up (in the serving process, on its event loop), closed at shutdown."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    enqueue: Enqueue
    stripe_client: stripe.StripeClient | None

    def require_stripe(self) -> stripe.StripeClient:
        if self.stripe_client is None:
            raise ConfigurationError("STRIPE_SECRET_KEY is not set", code="stripe_not_configured")
        return self.stripe_client


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


State = Annotated[WebState, Depends(web_state)]
