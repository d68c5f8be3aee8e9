"""The pipeline on a real three-master Redis Cluster: `REDIS_URL` names one node and nothing else
is set. Events are emitted across all shards (so onto every node), drained by a real worker and
beat, charged exactly once through a node restart while they flow; the CLI emits and reports on
the cluster; a broker URL naming the cluster is refused with a clear error."""

import asyncio
import json
import os
import random
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.cluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from metering.budget import halt
from metering.ledger import journal
from metering.ops import redis_client, redis_keys
from metering.ops.db import session_scope
from metering.ops.models import TransactionType
from metering.ops.redis_client import AsyncRedis, ClusterBrokerError
from metering.usage.producer import AsyncEmitter, Emitter
from tests.chaos.helpers import WORKER_ENV, Books, dead_letters_of, settled
from tests.chaos.services import REPO, running_beat
from tests.cluster.services import PrivateCluster, private_cluster
from tests.factories import create_experiment, create_user, unique
from tests.support import REDIS_URL, eventually
from tests.usage.helpers import Sessions, event
from tests.workers import running_worker

pytestmark = pytest.mark.slow

SHARDS = 6
METERING = str(Path(sys.executable).parent / "metering")


@dataclass
class Stack:
    cluster: PrivateCluster
    env: dict[str, str]


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private cluster for the usage streams, the shared plain Redis as the Celery broker, and
    beat sending drains and reclaims for every shard."""
    with private_cluster() as cluster:
        env = {
            **WORKER_ENV,
            "REDIS_URL": cluster.url,
            "CELERY_BROKER_URL": REDIS_URL,
            "METERING_USAGE_SHARDS": str(SHARDS),
        }
        with running_beat(env, tmp_path_factory.mktemp("beat")):
            yield Stack(cluster, env)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncRedis]:
    redis = await redis_client.open_client(stack.cluster.url)
    yield redis
    await redis.aclose()


def shard_of(experiment_id: str) -> int:
    return zlib.crc32(experiment_id.encode()) % SHARDS


async def books_on_every_shard(sessions: Sessions, users: int) -> Books:
    """Users with experiments until every shard has at least one (so every node has streams)."""
    books = Books()
    async with session_scope(sessions) as session:
        user_ids = [await create_user(session, books.credits) for _ in range(users)]
        n = 0
        while {shard_of(e) for e in books.owners} != set(range(SHARDS)) or n < 2 * users:
            books.owners[await create_experiment(session, user_ids[n % users])] = user_ids[
                n % users
            ]
            n += 1
    return books


class Producer:
    """Emits events ten at a time through `AsyncEmitter`, retrying each group with backoff until
    the cluster takes it (a retry reuses the event ids, as a producer must)."""

    def __init__(self, emitter: AsyncEmitter, hold_at: int | None = None) -> None:
        self.emitter = emitter
        self.sent = 0
        self.retries = 0
        self.hold_at = hold_at
        self.resume = asyncio.Event()

    async def acknowledged(self, count: int) -> bool:
        return self.sent >= count

    async def run(self, documents: list[dict[str, Any]]) -> None:
        for start in range(0, len(documents), 10):
            if start == self.hold_at:
                await self.resume.wait()  # so that the producer is still running meanwhile
            group = documents[start : start + 10]
            delay = 0.05
            while True:
                try:
                    await self.emitter.emit_many(group)
                    break
                except (RedisError, OSError):
                    self.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 1.0)
            self.sent += len(group)
            await asyncio.sleep(0.02)


async def all_settled(client: AsyncRedis, prefix: str) -> bool:
    for stream in redis_keys.usage_streams(prefix, SHARDS):
        if not await client.exists(stream) or not await settled(client, stream):
            return False
    return True


async def test_the_client_factory_detects_a_cluster_from_any_node(
    stack: Stack, redis_prefix: str
) -> None:
    for node in stack.cluster.nodes:
        assert redis_client.is_cluster(node.url)
        client = await redis_client.open_client(node.url)
        assert isinstance(client, redis.asyncio.cluster.RedisCluster)
        assert (
            await client.get(redis_keys.halt_flag("probe", "nothing")) is None
        )  # any slot, any node
        await client.aclose()
    producer = Emitter.from_url(stack.cluster.url, prefix=f"{redis_prefix}:sync", shards=SHARDS)
    try:
        for shard in range(SHARDS):
            experiment_id = next(f"sync-{n}" for n in range(1000) if shard_of(f"sync-{n}") == shard)
            producer.emit(event(experiment_id))
        assert not producer.should_stop("sync-0")
    finally:
        producer.close()
    assert not redis_client.is_cluster(REDIS_URL)
    plain = redis_client.connect(REDIS_URL)
    assert type(plain) is redis.asyncio.Redis
    await plain.aclose()
    with pytest.raises(ClusterBrokerError, match="CELERY_BROKER_URL"):
        redis_client.check_broker(stack.cluster.url)
    redis_client.check_broker(REDIS_URL)


async def test_the_pipeline_charges_exactly_once_across_the_cluster_through_a_node_restart(
    stack: Stack, client: AsyncRedis, sessions: Sessions, redis_prefix: str
) -> None:
    books = await books_on_every_shard(sessions, users=3)
    emitter = AsyncEmitter(client, prefix=redis_prefix, shards=SHARDS)
    documents = books.events(1500, random.Random(7))
    assert {shard_of(d["experiment_id"]) for d in documents} == set(range(SHARDS))
    with running_worker("usage", concurrency=2, env=stack.env) as worker:
        producer = Producer(emitter, hold_at=1000)
        flowing = asyncio.create_task(producer.run(documents))
        await eventually(lambda: producer.acknowledged(400), "events flowing")
        node = stack.cluster.nodes[1]  # the middle third of the slots: two shards live there
        run_id = node.run_id()
        await asyncio.to_thread(stack.cluster.restart, node)
        assert node.run_id() != run_id
        producer.resume.set()
        await flowing
        await Producer(emitter).run(documents[:50])  # retried calls: the same ids again
        await eventually(lambda: books.all_charged(sessions), "every event charged")
        await eventually(lambda: all_settled(client, redis_prefix), "every shard acknowledged")
        assert worker.process.poll() is None
    await books.assert_exact(sessions)
    assert await dead_letters_of(client, redis_prefix, books) == []


async def test_halt_flags_are_raised_and_lifted_on_the_cluster(
    client: AsyncRedis, sessions: Sessions, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}:halts"
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 0)
        experiments = [await create_experiment(session, user_id) for _ in range(6)]
    slots = {key_slot(redis_keys.halt_flag(prefix, e).encode()) for e in experiments}
    assert len(slots) > 1  # the flags live in several slots, and so on several nodes

    low = await halt.sync_halts(client, sessions, prefix, [user_id], threshold=0)
    assert sorted(low.raised) == sorted(experiments)
    for experiment_id in experiments:
        assert await AsyncEmitter(client, prefix=prefix).should_stop(experiment_id)

    async with session_scope(sessions) as session:
        await journal.post(
            session,
            journal.Posting(
                user_id=user_id,
                type=TransactionType.PURCHASE,
                amount=500,
                description="credits",
                idempotency_key=unique("purchase"),
            ),
        )
    high = await halt.sync_halts(client, sessions, prefix, [user_id], threshold=0)
    assert sorted(high.lifted) == sorted(experiments)
    for experiment_id in experiments:
        assert not await halt.is_halted(client, prefix, experiment_id)


def metering(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METERING, *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def test_metering_emit_and_status_work_on_the_cluster(stack: Stack, redis_prefix: str) -> None:
    # A prefix of its own: these events' experiments do not exist, and no drain should see them.
    env = {**stack.env, "METERING_REDIS_PREFIX": f"{redis_prefix}:cli"}
    experiments: dict[int, str] = {}
    n = 0
    while len(experiments) < SHARDS:
        experiments.setdefault(shard_of(f"cli-exp-{n}"), f"cli-exp-{n}")
        n += 1
    for experiment_id in experiments.values():
        emitted = metering(
            "emit",
            "--experiment",
            experiment_id,
            "--provider",
            "openai",
            "--model",
            "gpt-4o-mini",
            "--input-tokens",
            "100",
            "--output-tokens",
            "20",
            env=env,
        )
        assert emitted.returncode == 0, emitted.stderr
        assert "emitted event" in emitted.stdout

    status = metering("status", "--json", env=env)

    assert status.returncode == 0, status.stderr
    streams = json.loads(status.stdout)["streams"]
    assert [s["stream"] for s in streams] == redis_keys.usage_streams(f"{redis_prefix}:cli", SHARDS)
    assert [s["length"] for s in streams] == [1] * SHARDS


def test_a_broker_on_the_cluster_is_refused_with_a_clear_error(stack: Stack) -> None:
    env = {**stack.env, "CELERY_BROKER_URL": stack.cluster.url}

    status = metering("status", env=env)
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "metering.tasks.app", "worker", "-Q", "usage"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )

    assert status.returncode != 0
    assert "set CELERY_BROKER_URL to a plain Redis" in status.stderr
    assert worker.returncode != 0
    assert "set CELERY_BROKER_URL to a plain Redis" in worker.stderr
