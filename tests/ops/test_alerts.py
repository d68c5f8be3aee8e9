"""Low-balance alerts through a real worker: once per crossing on pub/sub and as one signed POST,
and again after a purchase lifts the balance and a new crossing follows."""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from metering import alerts, keys
from metering.db import session_scope
from metering.emitter import AsyncEmitter
from metering.stripe.webhooks import ReceivedEvent, store_event
from tests.factories import create_experiment, create_user
from tests.ops.conftest import send
from tests.pipeline.helpers import Sessions, balance, event
from tests.stripe.deliveries import checkout_session, record
from tests.stripe.deliveries import event as stripe_event
from tests.support import eventually
from tests.workers import running_worker

pytestmark = pytest.mark.slow

THRESHOLD = 1_000
SECRET = "alert-secret-3b9d"
BIG: dict[str, Any] = {"provider": "anthropic", "model": "claude-sonnet-4", "output_tokens": 0}
"""An event of 100,000 input tokens at $3 per million: 300 credits."""


@dataclass
class Receiver:
    """A local HTTP endpoint recording each POST's headers and body; answers `status`."""

    url: str = ""
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.posts.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


async def messages(pubsub: PubSub) -> list[dict[str, Any]]:
    """Alert messages delivered so far (skipping the subscription's confirmation)."""
    found = []
    while (message := await pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            found.append(json.loads(message["data"]))
    return found


async def spend(
    redis: Redis, prefix: str, sessions: Sessions, experiment_id: str, calls: int
) -> None:
    """Emit `calls` events of 300 credits and wait until they are charged and acknowledged."""
    user_stream = keys.usage_stream(prefix)
    await AsyncEmitter(redis, prefix=prefix).emit_many(
        [event(experiment_id, input_tokens=100_000, **BIG) for _ in range(calls)]
    )
    send(prefix, "metering.usage.drain", 0)

    async def settled() -> bool:
        for group in await redis.xinfo_groups(user_stream):
            if group["name"].decode() == keys.CONSUMER_GROUP:
                return int(group["pending"]) == 0 and int(group["lag"] or 0) == 0
        return False

    await eventually(settled, "the drain")


async def test_one_alert_per_crossing_and_again_after_a_purchase(
    receiver: Receiver, ops_prefix: str, redis: Redis, sessions: Sessions, database_url: str
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_500)
        experiment_id = await create_experiment(session, user_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.alerts_channel(ops_prefix))
    env = {
        "METERING_REDIS_PREFIX": ops_prefix,
        "METERING_LOW_BALANCE_CREDITS": str(THRESHOLD),
        "METERING_ALERT_WEBHOOK_URL": receiver.url,
        "METERING_ALERT_WEBHOOK_SECRET": SECRET,
    }
    try:
        with running_worker("usage,stripe", env=env):
            await spend(redis, ops_prefix, sessions, experiment_id, 2)  # 1,500 -> 900: crossed
            first = await messages(pubsub)
            assert [(m["user_id"], m["credits"]) for m in first] == [(user_id, 900)]
            await spend(redis, ops_prefix, sessions, experiment_id, 1)  # 600: still low
            assert await messages(pubsub) == []

            purchase = stripe_event("checkout.session.completed", checkout_session(user_id, 5_000))
            async with session_scope(sessions) as session:
                await record(session, purchase["data"]["object"])
                await store_event(
                    session,
                    ReceivedEvent(purchase["id"], purchase["type"], False, purchase),
                )
            send(ops_prefix, "metering.stripe.process_event", purchase["id"], queue="stripe")
            flag = keys.low_balance_flag(ops_prefix, user_id)

            async def rearmed() -> bool:
                return await balance(sessions, user_id) == 5_600 and not await redis.exists(flag)

            await eventually(rearmed, "the purchase to re-arm the alert")
            assert await messages(pubsub) == []

            await spend(redis, ops_prefix, sessions, experiment_id, 16)  # 5,600 -> 800: crossed
            second = await messages(pubsub)
            assert [(m["user_id"], m["credits"]) for m in second] == [(user_id, 800)]

            async def delivered() -> bool:
                return len(receiver.posts) >= 2

            await eventually(delivered, "two webhook deliveries")
    finally:
        await pubsub.aclose()

    assert len(receiver.posts) == 2
    sent = {m["alert_id"]: m for m in first + second}
    for headers, body in receiver.posts:
        assert alerts.verify(SECRET, headers[alerts.SIGNATURE_HEADER], body)
        assert not alerts.verify("another-secret", headers[alerts.SIGNATURE_HEADER], body)
        document = json.loads(body)
        assert headers[alerts.ALERT_ID_HEADER] == document["alert_id"]
        assert document == sent[document["alert_id"]]
        assert document["threshold"] == THRESHOLD
