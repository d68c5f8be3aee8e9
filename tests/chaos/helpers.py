"""The chaos suite's books: who owns what, what was published, and what everyone must hold."""

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.models import UsageCall
from tests.factories import create_experiment, create_user
from tests.usage.helpers import (
    Sessions,
    balance,
    credits_used,
    event,
    expected_credits,
    raw,
    violations,
)

WORKER_ENV = {
    "METERING_USAGE_BATCH_SIZE": "50",
    "METERING_USAGE_CLAIM_IDLE_MS": "500",
    "METERING_UNKNOWN_EXPERIMENT_RETRY_S": "0",
    "METERING_USAGE_MAX_DELIVERIES": "1000",
}
"""Small batches, and stalled entries and lapsed drain locks taken over within a second. Cases
hold batches blocked on row locks for seconds, and each reclaim of a blocked batch's entries counts
a delivery: the delivery limit is raised so that such entries are not dead-lettered as worn out."""
STARTING_CREDITS = 1_000_000


async def settled(redis: Redis, stream: str) -> bool:
    """Every entry of the stream delivered (lag 0) and acknowledged (nothing pending)."""
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and all(int(g["lag"] or 0) == 0 and int(g["pending"]) == 0 for g in groups)


@dataclass
class Books:
    """The users and experiments of one case and every event published for them.

    What each must hold is computed from the published events alone: an experiment is charged
    the exact cost of its distinct event ids rounded up once; a user loses what their
    experiments are charged, on top of `credits`.
    """

    credits: int = STARTING_CREDITS
    owners: dict[str, str] = field(default_factory=dict)
    published: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    extra: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Credits added to a user outside usage (purchases made by the case)."""

    @classmethod
    async def open(cls, sessions: Sessions, users: int, experiments_per_user: int) -> "Books":
        books = cls()
        async with session_scope(sessions) as session:
            for _ in range(users):
                user_id = await create_user(session, books.credits)
                for _ in range(experiments_per_user):
                    books.owners[await create_experiment(session, user_id)] = user_id
        return books

    @property
    def users(self) -> list[str]:
        return sorted(set(self.owners.values()))

    @property
    def experiments(self) -> list[str]:
        return sorted(self.owners)

    def events(self, count: int, rng: random.Random) -> list[dict[str, Any]]:
        """`count` new valid events spread at random over the experiments (recorded)."""
        documents = []
        for _ in range(count):
            experiment_id = rng.choice(self.experiments)
            documents.append(event(experiment_id, rng.randrange(300)))
        self.record(documents)
        return documents

    def record(self, documents: Iterable[dict[str, Any]]) -> None:
        for document in documents:
            self.published[document["experiment_id"]].append(document)

    def only(self, event_ids: set[str]) -> "Books":
        """The same accounts, with just the events whose ids are in `event_ids`."""
        kept: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for experiment_id, documents in self.published.items():
            kept[experiment_id] = [d for d in documents if d["event_id"] in event_ids]
        return Books(self.credits, self.owners, kept, self.extra)

    def event_ids(self) -> set[str]:
        return {d["event_id"] for docs in self.published.values() for d in docs}

    def expected_used(self, experiment_id: str) -> int:
        return expected_credits(self.published[experiment_id])

    def expected_balance(self, user_id: str) -> int:
        used = sum(self.expected_used(e) for e, owner in self.owners.items() if owner == user_id)
        return self.credits + self.extra[user_id] - used

    async def calls_recorded(self, sessions: Sessions) -> int:
        async with sessions() as session:
            return int(
                await session.scalar(
                    select(func.count()).where(UsageCall.experiment_id.in_(self.owners))
                )
                or 0
            )

    async def all_charged(self, sessions: Sessions) -> bool:
        return await self.calls_recorded(sessions) == len(self.event_ids())

    async def assert_exact(self, sessions: Sessions) -> None:
        """One USAGE row per distinct event id, the exact balances, and `reconcile` clean."""
        assert await self.calls_recorded(sessions) == len(self.event_ids())
        for experiment_id in self.experiments:
            assert await credits_used(sessions, experiment_id) == self.expected_used(
                experiment_id
            ), experiment_id
        for user_id in self.users:
            assert await balance(sessions, user_id) == self.expected_balance(user_id), user_id
        assert await violations(sessions) == []


async def publish(redis: Redis, prefix: str, documents: Iterable[dict[str, Any]]) -> list[str]:
    """XADD each document as a producer in any language would; returns the entry ids."""
    stream = redis_keys.usage_stream(prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for document in documents:
            pipe.xadd(stream, raw(document))
        return [i.decode() if isinstance(i, bytes) else i for i in await pipe.execute()]


async def dead_letters(redis: Redis, prefix: str) -> list[dict[str, str]]:
    entries = await redis.xrange(redis_keys.dead_letter_stream(prefix))
    return [
        {k.decode(): v.decode(errors="backslashreplace") for k, v in fields.items()}
        for _, fields in entries
    ]


async def dead_letters_of(redis: Redis, prefix: str, books: Books) -> list[dict[str, str]]:
    """The dead letters of this case's events (other cases share the stream)."""
    mine = books.event_ids()
    return [d for d in await dead_letters(redis, prefix) if d["event_id"] in mine]


@asynccontextmanager
async def row_locked(engine: AsyncEngine, user_id: str) -> AsyncIterator[AsyncConnection]:
    """Hold `user_id`'s row lock (as a long transaction elsewhere would) until the block ends."""
    async with engine.connect() as holder:
        await holder.execute(
            text('SELECT id FROM "User" WHERE id = :id FOR UPDATE'), {"id": user_id}
        )
        try:
            yield holder
        finally:
            await holder.rollback()


WAITING_WORKERS = text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() ORDER BY pid"
)


async def waiting_on_a_lock(engine: AsyncEngine) -> list[int]:
    """Backends of this database blocked on a lock (a worker's batch behind `row_locked`)."""
    async with engine.connect() as connection:
        return list((await connection.execute(WAITING_WORKERS)).scalars())
