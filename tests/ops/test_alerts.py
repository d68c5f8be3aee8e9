"""Balance alerts through a real worker: once per crossing on pub/sub and as one signed POST,
and again after a purchase lifts the balance and a new crossing follows; the hard floor and the
INTEGER limit of a balance, end to end."""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from metering.budget import alerts, halt
from metering.ledger import journal
from metering.ledger.journal import INT32_MIN
from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.models import TransactionType
from metering.ops.settings import Settings
from metering.stripe.webhooks import ReceivedEvent, store_event
from metering.usage import dead_letters
from metering.usage.producer import AsyncEmitter
from tests.factories import create_experiment, create_user, unique
from tests.ops.helpers import scrape, send, value
from tests.stripe.deliveries import checkout_session, record
from tests.stripe.deliveries import event as stripe_event
from tests.support import eventually
from tests.usage.helpers import Sessions, balance, event, violations
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
    await AsyncEmitter(redis, prefix=prefix).emit_many(
        [event(experiment_id, input_tokens=100_000, **BIG) for _ in range(calls)]
    )
    await drained(redis, prefix)


async def drained(redis: Redis, prefix: str) -> None:
    """Send a drain and wait until the usage stream has nothing pending or undelivered."""
    user_stream = redis_keys.usage_stream(prefix)
    send(prefix, "metering.usage.drain", 0)

    async def settled() -> bool:
        for group in await redis.xinfo_groups(user_stream):
            if group["name"].decode() == redis_keys.CONSUMER_GROUP:
                return int(group["pending"]) == 0 and int(group["lag"] or 0) == 0
        return False

    await eventually(settled, "the drain")


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the worker writes its metrics to and this process's `/metrics` reads."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    return folder


async def test_one_alert_per_crossing_and_again_after_a_purchase(
    receiver: Receiver, ops_prefix: str, redis: Redis, sessions: Sessions, database_url: str
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_500)
        experiment_id = await create_experiment(session, user_id)
    pubsub = redis.pubsub()
    await pubsub.subscribe(redis_keys.alerts_channel(ops_prefix))
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
            flag = redis_keys.low_balance_flag(ops_prefix, user_id)

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


async def indebted_user(sessions: Sessions, credits: int) -> tuple[str, str]:
    """A user whose balance is `credits` (reached through an ADJUSTMENT) and an experiment."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
        await journal.post(
            session,
            journal.Posting(user_id, TransactionType.ADJUSTMENT, credits, "debt", unique("debt")),
        )
        return user_id, await create_experiment(session, user_id)


def error_lines(log: list[str], event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines at error level with this event text."""
    found = []
    for line in log:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            assert record["level"] == "error", record
            found.append(record)
    return found


async def test_the_floor_halts_and_alerts_and_the_int32_limit_leaves_nothing_silent(
    receiver: Receiver,
    metrics_dir: Path,
    ops_prefix: str,
    redis: Redis,
    sessions: Sessions,
    database_url: str,
) -> None:
    """The operator allows any debt (halt threshold and low-balance threshold at INT32_MIN):
    a user falling past `BALANCE_FLOOR` is still halted and alerted, and a user at the INTEGER
    limit has the events it cannot hold dead-lettered, logged at error level, alerted, counted
    in credits and events, and charged once replayed after a top-up."""
    floor_user, floor_experiment = await indebted_user(sessions, alerts.BALANCE_FLOOR + 500)
    edge_user, edge_experiment = await indebted_user(sessions, INT32_MIN + 500)
    pubsub = redis.pubsub()
    await pubsub.subscribe(redis_keys.alerts_channel(ops_prefix))
    env = {
        "METERING_REDIS_PREFIX": ops_prefix,
        "METERING_HALT_THRESHOLD": str(INT32_MIN),
        "METERING_LOW_BALANCE_CREDITS": str(INT32_MIN),
        "METERING_ALERT_WEBHOOK_URL": receiver.url,
        "METERING_ALERT_WEBHOOK_SECRET": SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    try:
        with running_worker("usage", env=env) as worker:
            await spend(redis, ops_prefix, sessions, floor_experiment, 2)  # floor + 500 - 600
            await spend(redis, ops_prefix, sessions, edge_experiment, 3)  # one fits, two do not

            async def delivered() -> bool:
                return len(receiver.posts) >= 2

            await eventually(delivered, "the floor alerts' webhook deliveries")
            published: list[dict[str, Any]] = []

            async def all_published() -> bool:
                published.extend(await messages(pubsub))
                kinds = [m["type"] for m in published]
                events = sum(m.get("events", 0) for m in published)
                return kinds.count("balance_floor") == 2 and events == 2

            await eventually(all_published, "the alerts on pub/sub")
            log = list(worker.log)
    finally:
        await pubsub.aclose()

    assert await balance(sessions, floor_user) == alerts.BALANCE_FLOOR - 100
    assert await balance(sessions, edge_user) == INT32_MIN + 200
    for experiment_id in (floor_experiment, edge_experiment):
        assert await halt.is_halted(redis, ops_prefix, experiment_id)
    reason = json.loads(await redis.get(redis_keys.halt_flag(ops_prefix, floor_experiment)))[
        "reason"
    ]
    assert reason == f"balance {alerts.BALANCE_FLOOR - 100} credits is at or below -100000000"

    floors = [m for m in published if m["type"] == "balance_floor"]
    assert sorted((m["user_id"], m["credits"], m["threshold"]) for m in floors) == sorted(
        [
            (floor_user, alerts.BALANCE_FLOOR - 100, alerts.BALANCE_FLOOR),
            (edge_user, INT32_MIN + 200, alerts.BALANCE_FLOOR),
        ]
    )
    assert sorted(json.loads(body)["alert_id"] for _, body in receiver.posts) == sorted(
        m["alert_id"] for m in floors
    )
    uncharged = [m for m in published if m["type"] == "uncharged_usage"]
    assert {(m["experiment_id"], m["user_id"], m["reason"]) for m in uncharged} == {
        (edge_experiment, edge_user, "balance_overflow")
    }
    assert (sum(m["events"] for m in uncharged), sum(m["credits"] for m in uncharged)) == (2, 600)
    assert len(published) == len(floors) + len(uncharged)

    letters = await dead_letters.list_dead_letters(redis, ops_prefix)
    assert [d.reason for d in letters] == ["balance_overflow", "balance_overflow"]
    logged = error_lines(log, "usage left uncharged and dead-lettered")
    assert sorted(r["event_id"] for r in logged) == sorted(d.event_id for d in letters)
    assert {(r["user_id"], r["credits"]) for r in logged} == {(edge_user, 300)}
    assert (
        len(
            error_lines(
                log, "balance at or below the hard floor: the user's experiments are halted"
            )
        )
        == 2
    )

    settings = Settings(database_url=database_url, metering_redis_prefix=ops_prefix)
    _, samples = await scrape(settings)
    assert value(samples, "metering_uncharged_events_total", reason="balance_overflow") == 2
    assert value(samples, "metering_uncharged_credits_total", reason="balance_overflow") == 600
    assert value(samples, "metering_balance_floor_alerts_total") == 2
    assert value(samples, "metering_low_balance_alerts_total") == 0
    assert value(samples, "metering_halt_flags_raised_total") == 2

    # Nothing is lost: after a top-up, the dead letters replay and are charged once.
    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(edge_user, TransactionType.ADJUSTMENT, 10_000, "top-up", unique("top")),
        )
    await dead_letters.replay_dead_letters(redis, ops_prefix, 1, letters)
    with running_worker("usage", env=env):
        await drained(redis, ops_prefix)
    assert await balance(sessions, edge_user) == INT32_MIN + 200 + 10_000 - 600
    assert await dead_letters.list_dead_letters(redis, ops_prefix) == []
    assert await violations(sessions) == []


async def test_the_floor_alert_is_rearmed_once_the_balance_is_above_it(
    ops_prefix: str, redis: Redis, sessions: Sessions
) -> None:
    user_id, _ = await indebted_user(sessions, alerts.BALANCE_FLOOR - 1)
    below = {user_id: alerts.BALANCE_FLOOR - 1}
    first = await alerts.note_balances(redis, ops_prefix, below, THRESHOLD)
    assert [(a.type, a.threshold) for a in first] == [
        ("low_balance", THRESHOLD),
        ("balance_floor", alerts.BALANCE_FLOOR),
    ]
    assert await alerts.note_balances(redis, ops_prefix, below, THRESHOLD) == []

    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(user_id, TransactionType.ADJUSTMENT, 2, "settle", unique("settle")),
        )
    # Above the floor, still below the low-balance threshold: only the floor alert re-arms.
    assert not await alerts.rearm_if_recovered(redis, sessions, ops_prefix, user_id, THRESHOLD)
    assert not await redis.exists(redis_keys.balance_floor_flag(ops_prefix, user_id))
    assert await redis.exists(redis_keys.low_balance_flag(ops_prefix, user_id))
    again = await alerts.note_balances(redis, ops_prefix, below, THRESHOLD)
    assert [a.type for a in again] == ["balance_floor"]
    assert await violations(sessions) == []
