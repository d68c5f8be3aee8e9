"""POST /webhooks/stripe: signed deliveries stored once and enqueued; anything else refused."""

import time
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops.db import session_scope
from metering.ops.models import StripeEvent
from metering.ops.settings import Settings
from metering.web import create_app
from tests.stripe import deliveries
from tests.stripe.deliveries import WEBHOOK_SECRET, body_of, event, sign
from tests.web.helpers import Queue, serve


def refund_event() -> dict[str, object]:
    return event("charge.refunded", deliveries.charge(deliveries.new_id("pi"), 1_000, 100))


async def post(client: httpx.AsyncClient, body: str, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await client.post("/webhooks/stripe", content=body.encode(), headers=headers)


async def count(sessions: async_sessionmaker[AsyncSession], event_id: str) -> int:
    async with session_scope(sessions) as session:
        total = await session.scalar(
            select(func.count()).select_from(StripeEvent).where(StripeEvent.id == event_id)
        )
        return int(total or 0)


async def test_a_signed_delivery_is_stored_raw_and_enqueued(
    client: httpx.AsyncClient, queue: Queue, sessions: async_sessionmaker[AsyncSession]
) -> None:
    evt = refund_event()
    body = body_of(evt)

    response = await post(client, body, sign(body))

    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "id": evt["id"],
        "duplicate": False,
        "enqueued": True,
    }
    assert queue.sent == [evt["id"]]
    async with session_scope(sessions) as session:
        row = await session.get(StripeEvent, evt["id"])
    assert row is not None
    assert (row.type, row.livemode, row.payload) == ("charge.refunded", False, evt)
    assert row.payment_intent == evt["data"]["object"]["payment_intent"]  # type: ignore[index]
    assert (row.processed_at, row.attempts) == (None, 0)


async def test_a_repeated_delivery_stores_nothing_and_is_enqueued_until_processed(
    client: httpx.AsyncClient, queue: Queue, sessions: async_sessionmaker[AsyncSession]
) -> None:
    evt = refund_event()
    body = body_of(evt)

    await post(client, body, sign(body))
    unprocessed = await post(client, body, sign(body))
    async with session_scope(sessions) as session:
        await session.execute(
            update(StripeEvent).where(StripeEvent.id == evt["id"]).values(processed_at=func.now())
        )
    processed = await post(client, body, sign(body))

    assert (unprocessed.json()["duplicate"], unprocessed.json()["enqueued"]) == (True, True)
    assert (processed.json()["duplicate"], processed.json()["enqueued"]) == (True, False)
    assert queue.sent == [evt["id"], evt["id"]]
    assert await count(sessions, str(evt["id"])) == 1


def forged(body: str) -> str:
    return sign(body, secret="whsec_someoneelse")


def stale(body: str) -> str:
    return sign(body, timestamp=int(time.time()) - 301)


def future(body: str) -> str:
    return sign(body, timestamp=int(time.time()) + 3_600)


def tampered(body: str) -> str:
    return sign(body.replace("charge.refunded", "charge.refunded "))


def no_v1(body: str) -> str:
    return sign(body).split(",")[0]


@pytest.mark.parametrize("signature", [forged, stale, future, tampered, no_v1, None])
async def test_bad_signatures_are_400_and_store_nothing(
    client: httpx.AsyncClient,
    queue: Queue,
    sessions: async_sessionmaker[AsyncSession],
    signature: Callable[[str], str] | None,
) -> None:
    evt = refund_event()
    body = body_of(evt)

    response = await post(client, body, signature(body) if signature else None)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_webhook"
    assert "signature" in response.json()["error"]["message"]
    assert WEBHOOK_SECRET not in response.text
    assert queue.sent == []
    assert await count(sessions, str(evt["id"])) == 0


async def test_a_slightly_future_timestamp_is_accepted(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    body = body_of(refund_event())

    response = await post(client, body, sign(body, timestamp=int(time.time()) + 60))

    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    ["{not json", "[1, 2]", '{"object": "event", "id": "evt_x"}', '{"object": "charge"}', "\udcff"],
)
async def test_malformed_signed_bodies_are_400(
    client: httpx.AsyncClient, queue: Queue, body: str
) -> None:
    raw = body.encode("utf-8", "surrogateescape")
    headers = {"Stripe-Signature": sign(raw.decode("latin-1"))}

    response = await client.post("/webhooks/stripe", content=raw, headers=headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_webhook"
    assert queue.sent == []


async def test_a_failed_enqueue_still_answers_200_and_keeps_the_event(
    client: httpx.AsyncClient, queue: Queue, sessions: async_sessionmaker[AsyncSession]
) -> None:
    queue.broken = True
    evt = refund_event()
    body = body_of(evt)

    response = await post(client, body, sign(body))

    assert response.status_code == 200
    assert response.json()["enqueued"] is False
    assert await count(sessions, str(evt["id"])) == 1


async def test_without_a_webhook_secret_nothing_is_accepted(
    settings: Settings, queue: Queue, sessions: async_sessionmaker[AsyncSession]
) -> None:
    app = create_app(settings.model_copy(update={"stripe_webhook_secret": SecretStr("")}), queue)
    evt = refund_event()
    body = body_of(evt)
    async for client in serve(app):
        response = await post(client, body, sign(body, secret=""))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "webhook_not_configured"
    assert await count(sessions, str(evt["id"])) == 0
