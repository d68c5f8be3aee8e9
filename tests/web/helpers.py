"""Shared by the web tests: the app's credentials, the stand-ins for Stripe and the enqueue, and
an in-process client of an app."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

SECRET_KEY = "sk_test_51StandInSecretKey0123456789"
API_TOKEN = "api-token-7f3e9b2c4d"
FRONTEND_URL = "https://app.example.test"


@dataclass
class StandIn:
    """Records each form-encoded request; answers a checkout.session, or `error` when set."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    error: tuple[int, dict[str, Any]] | None = None


@dataclass
class Queue:
    """Stands in for the Celery enqueue: records ids, or raises when `broken`."""

    sent: list[str] = field(default_factory=list)
    broken: bool = False

    def __call__(self, event_id: str) -> None:
        if self.broken:
            raise ConnectionError("broker unreachable")
        self.sent.append(event_id)


async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, with the app's start-up and shutdown run around it."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://metering") as client,
    ):
        yield client


Sessions = async_sessionmaker[AsyncSession]
