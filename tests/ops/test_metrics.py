"""Prometheus metrics move when events flow through a real usage worker, and `/metrics` adds up
the worker's processes (multiprocess mode) with the streams' gauges read at scrape time."""

from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.settings import Settings
from metering.usage import streams
from metering.usage.producer import AsyncEmitter
from tests.factories import create_experiment, create_user
from tests.ops.helpers import scrape, send, value
from tests.support import eventually
from tests.usage.helpers import Sessions, calls_recorded, event, raw
from tests.workers import running_worker

pytestmark = pytest.mark.slow

EVENTS = 30
BATCH = 10


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the worker writes to and this process's `/metrics` reads."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    return folder


async def test_metrics_move_when_events_flow(
    metrics_dir: Path,
    ops_prefix: str,
    database_url: str,
    redis: Redis,
    sessions: Sessions,
) -> None:
    settings = Settings(database_url=database_url, metering_redis_prefix=ops_prefix)
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
    stream = redis_keys.usage_stream(ops_prefix)
    await streams.ensure_group(redis, stream)
    await AsyncEmitter(redis, prefix=ops_prefix).emit_many(
        [event(experiment_id, n) for n in range(EVENTS)]
    )
    await redis.xadd(stream, raw(event(experiment_id, output_tokens=-5)))

    response, before = await scrape(settings)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(before, "metering_stream_length", stream=stream) == EVENTS + 1
    assert value(before, "metering_stream_lag", stream=stream) == EVENTS + 1
    assert value(before, "metering_usage_events_total", outcome="charged") == 0

    env = {
        "METERING_REDIS_PREFIX": ops_prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METERING_USAGE_BATCH_SIZE": str(BATCH),
    }
    with running_worker("usage", env=env):
        send(ops_prefix, "metering.usage.drain", 0)

        async def counted() -> bool:
            _, now = await scrape(settings)
            return value(now, "metering_usage_events_total", outcome="received") == EVENTS + 1

        await eventually(counted, "the worker's counters")

    assert await calls_recorded(sessions, experiment_id) == EVENTS
    _, after = await scrape(settings)
    assert value(after, "metering_usage_events_total", outcome="charged") == EVENTS
    assert value(after, "metering_usage_events_total", outcome="dead_lettered") == 1
    assert value(after, "metering_dead_letters_total", reason="invalid_event") == 1
    assert value(after, "metering_dead_letter_length") == 1
    assert value(after, "metering_batch_size_count") == (EVENTS + 1 + BATCH - 1) // BATCH
    assert value(after, "metering_batch_size_sum") == EVENTS + 1
    assert value(after, "metering_event_age_seconds_count") == EVENTS
    assert value(after, "metering_stream_pending", stream=stream) == 0
    assert value(after, "metering_stream_lag", stream=stream) == 0

    async with session_scope(sessions) as session:
        rows = await session.execute(
            text(
                "SELECT metadata->>'provider' AS provider, metadata->>'model' AS model, "
                '-sum(amount) AS credits FROM "CreditTransaction" '
                'WHERE "experimentId" = :id GROUP BY 1, 2'
            ),
            {"id": experiment_id},
        )
        ledger = {(r.provider, r.model): int(r.credits) for r in rows}
    assert len(ledger) == 3
    for (provider, model), credits in ledger.items():
        assert (
            value(after, "metering_credits_charged_total", provider=provider, model=model)
            == credits
        )


async def test_metrics_are_served_without_the_streams_when_redis_is_down(
    database_url: str, unused_port: int
) -> None:
    settings = Settings(database_url=database_url, redis_url=f"redis://127.0.0.1:{unused_port}/0")
    response, samples = await scrape(settings)
    assert response.status_code == 200
    assert ("metering_halt_flags_raised_total", frozenset()) in samples
    assert not any(name.startswith("metering_stream_") for name, _ in samples)
