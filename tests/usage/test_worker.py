"""The pipeline end to end: real Celery worker and beat processes, the real Redis and PostgreSQL."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.usage.producer import AsyncEmitter
from tests.factories import create_experiment, create_user
from tests.support import eventually
from tests.usage.helpers import (
    Sessions,
    balance,
    calls_recorded,
    credits_used,
    event,
    expected_credits,
    raw,
    violations,
)
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

WORKER_ENV = {
    "METERING_USAGE_BATCH_SIZE": "100",
    "METERING_USAGE_CLAIM_IDLE_MS": "1000",
    "METERING_UNKNOWN_EXPERIMENT_RETRY_S": "0",
    # Reclaims of a batch blocked on a row lock count deliveries: don't wear entries out here.
    "METERING_USAGE_MAX_DELIVERIES": "1000",
}


@pytest.fixture(scope="module")
def beat(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`celery beat`, sending drains and reclaims for the run's streams."""
    schedule = tmp_path_factory.mktemp("beat") / "schedule"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "metering.tasks.app", "beat", "-s", str(schedule)],
        env={**os.environ, **WORKER_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    yield
    process.terminate()
    process.wait(30)


@contextmanager
def usage_worker(concurrency: int) -> Iterator[Worker]:
    """`running_worker` on the usage queue."""
    with running_worker("usage", concurrency=concurrency, env=WORKER_ENV) as worker:
        yield worker


@pytest.fixture(scope="module")
def worker(beat: None) -> Iterator[None]:
    with usage_worker(concurrency=2):
        yield


async def owner(sessions: Sessions, credits: int = 1_000_000) -> tuple[str, str]:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits)
        experiment_id = await create_experiment(session, user_id)
    return user_id, experiment_id


async def test_emitted_and_raw_events_are_charged_exactly_once(
    worker: None, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    user_id, experiment_id = await owner(sessions)
    documents = [event(experiment_id, n) for n in range(250)]
    await AsyncEmitter(redis, prefix=redis_prefix).emit_many(documents[:200])
    stream = redis_keys.usage_stream(redis_prefix)
    for document in [*documents[200:], *documents[:10]]:
        await redis.xadd(stream, raw(document))

    async def charged() -> bool:
        return await calls_recorded(sessions, experiment_id) == 250

    await eventually(charged, "every event charged")
    await AsyncEmitter(redis, prefix=redis_prefix).emit_many(documents[:5])  # late retries
    await eventually(lambda: _settled(redis, stream), "the stream settled")

    expected = expected_credits(documents)
    assert await calls_recorded(sessions, experiment_id) == 250
    assert await credits_used(sessions, experiment_id) == expected
    assert await balance(sessions, user_id) == 1_000_000 - expected
    assert await violations(sessions) == []


async def test_a_poison_event_is_dead_lettered_and_its_batch_charged(
    worker: None, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    _, experiment_id = await owner(sessions)
    good = [event(experiment_id, n) for n in range(20)]
    poison = event(experiment_id, event_id=f"poison-{experiment_id}", output_tokens=-1)
    stream = redis_keys.usage_stream(redis_prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for document in [*good[:10], poison, *good[10:]]:
            pipe.xadd(stream, raw(document))
        await pipe.execute()

    async def dead_lettered() -> bool:
        entries = await redis.xrange(redis_keys.dead_letter_stream(redis_prefix))
        return any(fields[b"event_id"] == poison["event_id"].encode() for _, fields in entries)

    await eventually(dead_lettered, "the poison event dead-lettered")
    await eventually(lambda: _rows_are(sessions, experiment_id, 20), "20 rows")
    assert await credits_used(sessions, experiment_id) == expected_credits(good)
    assert await violations(sessions) == []


async def test_the_budget_stop_fires(
    worker: None, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    user_id, experiment_id = await owner(sessions, credits=2)
    emitter = AsyncEmitter(redis, prefix=redis_prefix)
    assert not await emitter.should_stop(experiment_id)
    await emitter.emit_many([event(experiment_id, n) for n in range(30)])

    await eventually(lambda: emitter.should_stop(experiment_id), "the halt flag")
    await eventually(lambda: _rows_are(sessions, experiment_id, 30), "30 rows")
    assert await balance(sessions, user_id) <= 0
    assert await violations(sessions) == []


async def test_a_worker_killed_mid_batch_loses_and_doubles_nothing(
    beat: None, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    user_id, experiment_id = await owner(sessions)
    documents = [event(experiment_id, n) for n in range(20_000)]
    emitter = AsyncEmitter(redis, prefix=redis_prefix)
    for start in range(0, len(documents), 1000):
        await emitter.emit_many(documents[start : start + 1000])

    with usage_worker(concurrency=1) as doomed:
        # Killed as soon as the first batch commits, while later ones are in flight.
        await eventually(
            lambda: _rows_above(sessions, experiment_id, 0), "a first row", every_s=0.01
        )
        doomed.kill()
    charged_before_restart = await calls_recorded(sessions, experiment_id)
    assert charged_before_restart < len(documents)

    with usage_worker(concurrency=2):
        await eventually(lambda: _rows_are(sessions, experiment_id, len(documents)), "every row")
        stream = redis_keys.usage_stream(redis_prefix)
        await eventually(lambda: _settled(redis, stream), "the stream settled")

    expected = expected_credits(documents)
    assert await credits_used(sessions, experiment_id) == expected
    assert await balance(sessions, user_id) == 1_000_000 - expected
    assert await violations(sessions) == []


async def _rows_are(sessions: Sessions, experiment_id: str, count: int) -> bool:
    return await calls_recorded(sessions, experiment_id) == count


async def _rows_above(sessions: Sessions, experiment_id: str, count: int) -> bool:
    return await calls_recorded(sessions, experiment_id) > count


async def _settled(redis: Redis, stream: str) -> bool:
    """Every entry of the stream delivered (lag 0) and acknowledged (nothing pending)."""
    (group,) = await redis.xinfo_groups(stream)
    return int(group["lag"] or 0) == 0 and int(group["pending"]) == 0
