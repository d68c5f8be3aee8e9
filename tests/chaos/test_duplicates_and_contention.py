"""One event id with two payloads, end to end; and many transactions fighting over the same rows."""

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.ledger import journal
from metering.ops import redis_keys
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction
from metering.ops.models import TransactionType
from metering.ops.settings import get_settings
from metering.usage import drain
from metering.usage.streams import Entry
from tests.chaos.helpers import (
    WORKER_ENV,
    Books,
    dead_letters_of,
    publish,
    settled,
)
from tests.factories import unique
from tests.support import eventually
from tests.usage.helpers import Sessions, event, raw
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow

DEBITS = 50
PURCHASE = 5_000


@pytest.fixture(scope="module")
def worker(beat: None) -> Iterator[Worker]:
    with running_worker("usage", env=WORKER_ENV) as running:
        yield running


async def test_a_second_payload_for_an_event_id_is_dead_lettered_and_the_first_stands(
    worker: Worker, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=1, experiments_per_user=1)
    (experiment_id,) = books.experiments
    first = event(experiment_id, 1)
    books.record([first])
    await publish(redis, redis_prefix, [first])
    await eventually(lambda: books.all_charged(sessions), "the first payload charged")

    later = event(experiment_id, 2)
    books.record([later])
    conflicting = [
        {**first, "output_tokens": first["output_tokens"] * 100},  # across batches
        {**later, "input_tokens": 7},  # within one batch
    ]
    await publish(redis, redis_prefix, [first, later, *conflicting, later])
    await eventually(lambda: settled(redis, redis_keys.usage_stream(redis_prefix)), "all acked")

    letters = await dead_letters_of(redis, redis_prefix, books)
    assert sorted((d["reason"], d["event_id"]) for d in letters) == sorted(
        ("conflicting_duplicate", d["event_id"]) for d in conflicting
    )
    assert sorted(d["event"] for d in letters) == sorted(raw(d)["event"] for d in conflicting)
    assert "conflicting_duplicate" in "".join(worker.log)
    await books.assert_exact(sessions)


@pytest.fixture
async def wide_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Connections for half the debits at once (pool and overflow), sparing the shared server."""
    engine = create_engine(database_url, pool_size=DEBITS // 4)
    yield engine
    await engine.dispose()


def _config(prefix: str) -> drain.DrainConfig:
    return dataclasses.replace(drain.DrainConfig.from_settings(get_settings()), prefix=prefix)


def _entries(prefix: str, documents: list[dict[str, Any]]) -> list[Entry]:
    now_ms = int(time.time() * 1000)
    stream = redis_keys.usage_stream(prefix)
    return [Entry(stream, f"{now_ms}-{i}", raw(d)) for i, d in enumerate(documents)]


async def test_fifty_concurrent_debits_and_a_purchase_on_one_user(
    wide_engine: AsyncEngine, sessions: Sessions, redis: Redis, redis_prefix: str
) -> None:
    books = await Books.open(sessions, users=1, experiments_per_user=5)
    (user_id,) = books.users
    prefix = f"{redis_prefix}-debits"
    config = _config(prefix)
    wide = make_sessionmaker(wide_engine)
    batches = [_entries(prefix, books.events(1, random.Random(n))) for n in range(DEBITS)]

    async def purchase() -> None:
        posting = journal.Posting(
            user_id=user_id,
            type=TransactionType.PURCHASE,
            amount=PURCHASE,
            description="bought during a run",
            idempotency_key=unique("cs"),
        )
        await run_in_transaction(wide, lambda session: journal.post(session, posting))

    work = [drain.process_batch(redis, wide, config, batch) for batch in batches]
    work.insert(DEBITS // 2, purchase())
    results = await asyncio.gather(*work)
    books.extra[user_id] += PURCHASE

    reports = [r for r in results if isinstance(r, drain.BatchReport)]
    assert sum(r.charged for r in reports) == DEBITS
    assert sum(r.dead for r in reports) == 0
    await books.assert_exact(sessions)


async def test_overlapping_batches_in_random_order_all_commit(
    wide_engine: AsyncEngine, sessions: Sessions, redis: Redis, redis_prefix: str
) -> None:
    rng = random.Random(21)
    books = await Books.open(sessions, users=6, experiments_per_user=2)
    prefix = f"{redis_prefix}-overlap"
    config = _config(prefix)
    wide = make_sessionmaker(wide_engine)
    documents = books.events(1200, rng)
    # Every tenth event is also in another batch, which may run at the same moment.
    batches = [documents[i : i + 30] + rng.sample(documents, 3) for i in range(0, 1200, 30)]
    for batch in batches:
        rng.shuffle(batch)
    rng.shuffle(batches)
    gate = asyncio.Semaphore(12)

    async def charge(batch: list[dict[str, Any]]) -> drain.BatchReport:
        async with gate:
            return await drain.process_batch(redis, wide, config, _entries(prefix, batch))

    reports = await asyncio.gather(*(charge(batch) for batch in batches))

    assert sum(r.charged for r in reports) == len(documents)
    assert sum(r.dead + r.retrying for r in reports) == 0
    assert await redis.xlen(redis_keys.dead_letter_stream(prefix)) == 0
    await books.assert_exact(sessions)
