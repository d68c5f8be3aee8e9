"""POST /checkout/sessions against a local stand-in for Stripe's API."""

import io
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops.db import session_scope
from metering.ops.logs import configure_logging
from metering.ops.models import StripeCheckoutSession
from metering.ops.settings import Settings
from metering.web import create_app
from tests.factories import create_user
from tests.web.helpers import API_TOKEN, FRONTEND_URL, SECRET_KEY, Queue, StandIn, serve

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

# stripe's HTTPXClient posts its form with httpx's deprecated `data=<str>`; harmless.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content:DeprecationWarning"
)


@pytest.fixture
def service_logs() -> Iterator[io.StringIO]:
    """What the service logs (every library, at DEBUG), as its configured handler writes it."""
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    logging.getLogger().setLevel(logging.WARNING)


@pytest.fixture
async def user_id(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with session_scope(sessions) as session:
        return await create_user(session)


async def recorded(sessions: async_sessionmaker[AsyncSession], user_id: str) -> list[Any]:
    async with session_scope(sessions) as session:
        rows = await session.scalars(
            select(StripeCheckoutSession).where(StripeCheckoutSession.user_id == user_id)
        )
        return [(r.id, r.credits, r.amount_cents, r.currency) for r in rows]


async def test_a_session_sells_credits_in_payment_mode(
    client: httpx.AsyncClient,
    stripe_api: StandIn,
    user_id: str,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    response = await client.post(
        "/checkout/sessions", json={"user_id": user_id, "credits": 1_000}, headers=AUTH
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("cs_test_")
    assert body["url"].endswith(body["id"])
    assert (body["credits"], body["amount_cents"], body["currency"]) == (1_000, 100, "usd")
    (request,) = stripe_api.requests
    assert request["path"] == "/v1/checkout/sessions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET_KEY}"
    form = request["form"]
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == user_id
    assert (form["metadata[userId]"], form["metadata[credits]"]) == (user_id, "1000")
    assert form["payment_intent_data[metadata][userId]"] == user_id
    assert form["line_items[0][price_data][unit_amount]"] == "100"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][quantity]"] == "1"
    assert form["success_url"].startswith(f"{FRONTEND_URL}/")
    assert "{CHECKOUT_SESSION_ID}" in form["success_url"]
    assert form["cancel_url"].startswith(f"{FRONTEND_URL}/")
    assert form["adaptive_pricing[enabled]"] == "false"
    assert await recorded(sessions, user_id) == [(body["id"], 1_000, 100, "usd")]


async def test_a_pack_from_settings_sets_the_credits(
    client: httpx.AsyncClient, stripe_api: StandIn, user_id: str
) -> None:
    response = await client.post(
        "/checkout/sessions", json={"user_id": user_id, "pack": "starter"}, headers=AUTH
    )

    assert response.status_code == 201, response.text
    assert (response.json()["credits"], response.json()["amount_cents"]) == (5_000, 500)
    assert stripe_api.requests[0]["form"]["metadata[credits]"] == "5000"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"credits": 499}, 422, "invalid_amount"),
        ({"credits": 1_005}, 422, "invalid_amount"),
        ({"credits": 0}, 422, "invalid_amount"),
        ({"credits": 100_000_000}, 422, "invalid_amount"),
        ({"credits": "1000"}, 422, "invalid_request"),
        ({"credits": 1_000, "pack": "starter"}, 422, "invalid_amount"),
        ({}, 422, "invalid_amount"),
        ({"pack": "huge"}, 422, "unknown_pack"),
    ],
)
async def test_bad_amounts_are_refused_before_stripe_is_called(
    client: httpx.AsyncClient,
    stripe_api: StandIn,
    user_id: str,
    body: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = await client.post(
        "/checkout/sessions", json={"user_id": user_id, **body}, headers=AUTH
    )

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert stripe_api.requests == []


async def test_an_unknown_user_is_404(client: httpx.AsyncClient, stripe_api: StandIn) -> None:
    response = await client.post(
        "/checkout/sessions", json={"user_id": "user-nobody", "credits": 1_000}, headers=AUTH
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert stripe_api.requests == []


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}]
)
async def test_the_api_token_is_required(
    client: httpx.AsyncClient, stripe_api: StandIn, user_id: str, headers: dict[str, str]
) -> None:
    response = await client.post(
        "/checkout/sessions", json={"user_id": user_id, "credits": 1_000}, headers=headers
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert stripe_api.requests == []


async def test_stripe_errors_are_502_and_secrets_stay_out_of_errors_and_logs(
    client: httpx.AsyncClient,
    stripe_api: StandIn,
    user_id: str,
    service_logs: io.StringIO,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    stripe_api.error = (
        401,
        {
            "error": {
                "type": "invalid_request_error",
                "message": f"Invalid API Key provided: {SECRET_KEY}",
            }
        },
    )

    refused = await client.post(
        "/checkout/sessions", json={"user_id": user_id, "credits": 1_000}, headers=AUTH
    )
    unauthorized = await client.post(
        "/checkout/sessions",
        json={"user_id": user_id, "credits": 1_000},
        headers={"Authorization": f"Bearer {API_TOKEN}x"},
    )

    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "stripe_error"
    assert "Invalid API Key provided" in refused.json()["error"]["message"]
    assert "Invalid API Key provided" in service_logs.getvalue()
    everything = refused.text + unauthorized.text + service_logs.getvalue()
    for secret in (SECRET_KEY, API_TOKEN):
        assert secret not in everything
    assert await recorded(sessions, user_id) == []


async def test_stripe_unreachable_is_503(
    settings: Settings, queue: Queue, user_id: str, unused_port: int
) -> None:
    app = create_app(
        settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{unused_port}"}), queue
    )
    async for client in serve(app):
        response = await client.post(
            "/checkout/sessions", json={"user_id": user_id, "credits": 1_000}, headers=AUTH
        )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "stripe_unavailable"


async def test_without_a_stripe_key_checkout_is_503(
    settings: Settings, queue: Queue, user_id: str
) -> None:
    app = create_app(settings.model_copy(update={"stripe_secret_key": SecretStr("")}), queue)
    async for client in serve(app):
        response = await client.post(
            "/checkout/sessions", json={"user_id": user_id, "credits": 1_000}, headers=AUTH
        )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "stripe_not_configured"
