"""The metrics alerts are made of: the oldest pending entry's age, reconcile's last result and the
Stripe events waiting (read at scrape time), and task outcomes counted by a real worker."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from metering.ops import metrics, redis_keys
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.settings import Settings
from metering.usage import streams
from metering.usage.stream_stats import read_backlog
from tests.factories import create_user
from tests.ops.helpers import send
from tests.ops.scrape import samples, scrape
from tests.support import eventually
from tests.usage.helpers import event, raw
from tests.workers import running_worker

METERING = str(Path(sys.executable).parent / "metering")


async def test_oldest_pending_age_is_that_of_the_oldest_unacknowledged_entry(
    redis: Redis, ops_prefix: str
) -> None:
    prefix = f"{ops_prefix}:oldest"
    stream = redis_keys.usage_stream(prefix)
    now_ms = int(time.time() * 1000)
    first = await redis.xadd(stream, raw(event("exp")), id=f"{now_ms - 90_000}-0")
    await redis.xadd(stream, raw(event("exp")), id=f"{now_ms - 30_000}-0")
    await streams.ensure_group(redis, stream)

    undelivered = (await read_backlog(redis, prefix, 1)).streams[0]
    assert (undelivered.lag, undelivered.pending, undelivered.oldest_pending_age_s) == (2, 0, 0)

    await streams.read_new(redis, stream, "test", 10)
    both = (await read_backlog(redis, prefix, 1)).streams[0]
    assert both.pending == 2
    assert 90 <= both.oldest_pending_age_s < 3600

    await redis.xack(stream, redis_keys.CONSUMER_GROUP, first)
    backlog = await read_backlog(redis, prefix, 1)
    assert 30 <= backlog.streams[0].oldest_pending_age_s < 90
    exported = samples(metrics.render(backlog.collector()).decode())
    age = exported[("metering_stream_oldest_pending_age_seconds", frozenset({("stream", stream)}))]
    assert 30 <= age < 90


def reconcile(database_url: str, prefix: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METERING, "reconcile"],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "METERING_REDIS_PREFIX": prefix,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def gauge(exposition: str, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, frozenset(labels.items())))


async def test_reconcile_result_and_waiting_stripe_events_are_exported(
    migrated_database: str, ops_prefix: str, redis: Redis, unused_port: int
) -> None:
    prefix = f"{ops_prefix}:ledger"
    settings = Settings(database_url=migrated_database, metering_redis_prefix=prefix)
    before = await scrape(settings)
    assert gauge(before, "metering_reconcile_violations") is None
    assert gauge(before, "metering_reconcile_last_run_timestamp_seconds") is None
    for outcome in metrics.STRIPE_UNPROCESSED_OUTCOMES:
        assert gauge(before, "metering_stripe_events_unprocessed", outcome=outcome) == 0

    started = time.time()
    clean = reconcile(migrated_database, prefix, settings.redis_url)
    assert clean.returncode == 0, clean.stderr
    exposition = await scrape(settings)
    assert gauge(exposition, "metering_reconcile_violations") == 0
    checked_at = gauge(exposition, "metering_reconcile_last_run_timestamp_seconds")
    assert checked_at is not None
    assert started <= checked_at <= time.time()

    engine = create_engine(migrated_database, pool_size=1)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            user_id = await create_user(session, 500)
            await session.execute(
                text('UPDATE "User" SET credits = credits + 1 WHERE id = :id'), {"id": user_id}
            )
            await session.execute(
                text(
                    'INSERT INTO "StripeEvent" (id, type, livemode, payload, "receivedAt", '
                    '"processedAt", outcome) VALUES '
                    "('evt_new', 'checkout.session.completed', false, '{}', "
                    "(now() AT TIME ZONE 'UTC') - interval '10 minutes', NULL, NULL), "
                    "('evt_failed', 'charge.refunded', false, '{}', "
                    "(now() AT TIME ZONE 'UTC') - interval '2 hours', NULL, 'failed'), "
                    "('evt_done', 'charge.refunded', false, '{}', "
                    "(now() AT TIME ZONE 'UTC') - interval '3 hours', now(), 'clawed_back')"
                )
            )
    finally:
        await engine.dispose()

    broken = reconcile(migrated_database, prefix, settings.redis_url)
    assert broken.returncode == 1
    exposition = await scrape(settings)
    assert gauge(exposition, "metering_reconcile_violations") == 1
    assert gauge(exposition, "metering_stripe_events_unprocessed", outcome="pending") == 1
    assert gauge(exposition, "metering_stripe_events_unprocessed", outcome="failed") == 1
    assert gauge(exposition, "metering_stripe_events_unprocessed", outcome="retrying") == 0
    pending_age = gauge(
        exposition, "metering_stripe_events_oldest_unprocessed_seconds", outcome="pending"
    )
    failed_age = gauge(
        exposition, "metering_stripe_events_oldest_unprocessed_seconds", outcome="failed"
    )
    assert pending_age is not None
    assert failed_age is not None
    assert 600 <= pending_age < 7200 <= failed_age

    # Without Redis, reconcile still reports (and fails) as before; the last result stands.
    offline = reconcile(migrated_database, prefix, f"redis://127.0.0.1:{unused_port}/0")
    assert offline.returncode == 1
    assert "violation" in offline.stderr
    assert "result not recorded for /metrics" in offline.stderr
    assert gauge(await scrape(settings), "metering_reconcile_violations") == 1


async def test_metrics_are_served_without_the_ledger_gauges_when_postgresql_is_down(
    ops_prefix: str, unused_port: int
) -> None:
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{unused_port}/metering",
        metering_redis_prefix=f"{ops_prefix}:nodb",
    )
    exposition = await scrape(settings)
    assert (
        gauge(
            exposition,
            "metering_stream_lag",
            stream=redis_keys.usage_stream(settings.metering_redis_prefix),
        )
        == 0
    )
    assert "metering_stripe_events_unprocessed" not in exposition


@pytest.mark.slow
async def test_a_worker_counts_each_task_outcome(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ops_prefix: str,
    redis: Redis,
    unused_port: int,
) -> None:
    """Against a database that does not answer, a drain with work retries; a drain of a shard
    that does not exist fails for good; a reclaim with nothing idle succeeds."""
    prefix = f"{ops_prefix}:tasks"
    folder = tmp_path / "metrics"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    await redis.xadd(redis_keys.usage_stream(prefix), raw(event("exp-unreachable")))
    env = {
        "METERING_REDIS_PREFIX": prefix,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{unused_port}/metering",
    }

    def count(task: str, outcome: str) -> float:
        labels = frozenset({("task", task), ("outcome", outcome)})
        return samples(metrics.render().decode()).get(("metering_tasks_total", labels), 0.0)

    with running_worker("usage", env=env):
        send(prefix, "metering.usage.drain", 0)
        send(prefix, "metering.usage.drain", 7)
        send(prefix, "metering.usage.reclaim", 0)

        async def counted() -> bool:
            return (
                count("metering.usage.drain", "retried") >= 1
                and count("metering.usage.drain", "failed") == 1
                and count("metering.usage.reclaim", "succeeded") == 1
            )

        await eventually(counted, "the worker's task outcomes")
    assert count("metering.usage.drain", "succeeded") == 0
