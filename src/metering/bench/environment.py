"""What a benchmark run owns: a fresh database, a Redis key prefix, and child processes.

Everything is made per run and removed afterwards: the database `metering_bench_<run>` on the
server of DATABASE_URL (never the configured database itself), and every Redis key under the
prefix `metering-bench-<run>`. Its child processes run in a `metering.dev.processes` group.
"""

import os
import time
import uuid
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import func, insert, make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from metering.bench.workload import USER_CREDITS, Population
from metering.dev.processes import ProcessGroup, celery_command
from metering.ledger import journal
from metering.ops import migrate
from metering.ops.models import MAACExperiment, TransactionType, User
from metering.ops.settings import to_asyncpg_url

KEPT_LINES = 200


@dataclass(frozen=True)
class Services:
    """Where a run's data lives."""

    run_id: str
    database_url: str
    redis_url: str
    redis_prefix: str

    def environment(self, **extra: str) -> dict[str, str]:
        """Environment of a child process: this run's database and keys."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": self.redis_url,
            "METERING_REDIS_PREFIX": self.redis_prefix,
            **extra,
        }


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:6]}"


def database_url_for(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url`."""
    return (
        make_url(to_asyncpg_url(server_url))
        .set(database=name)
        .render_as_string(hide_password=False)
        .replace("postgresql+asyncpg://", "postgresql://")
    )


async def create_database(url: str) -> None:
    """Create the (new) database of `url` and migrate it to head."""
    await _admin(url, f'CREATE DATABASE "{make_url(to_asyncpg_url(url)).database}"')
    await migrate.upgrade_async(url)


async def drop_database(url: str) -> None:
    await _admin(
        url, f'DROP DATABASE IF EXISTS "{make_url(to_asyncpg_url(url)).database}" WITH (FORCE)'
    )


async def _admin(url: str, statement: str) -> None:
    server = make_url(to_asyncpg_url(url)).set(database="postgres")
    engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def delete_keys(redis_url: str, prefix: str) -> int:
    """Delete every key under `prefix`; returns how many."""
    client = Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += int(client.delete(*batch))
                batch.clear()
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


async def seed(session: AsyncSession, people: Population) -> None:
    """Users with `USER_CREDITS` each (bought through the ledger) and their experiments."""
    await session.execute(
        insert(User).values(updated_at=func.now()),
        [{"id": u, "email": f"{u}@bench.invalid"} for u in people.users],
    )
    await journal.post_many(
        session,
        [
            journal.Posting(
                user_id=user_id,
                type=TransactionType.PURCHASE,
                amount=USER_CREDITS,
                description="benchmark credits",
                idempotency_key=f"{user_id}-purchase",
            )
            for user_id in people.users
        ],
    )
    await session.execute(
        insert(MAACExperiment).values(updated_at=func.now()),
        [
            {
                "id": experiment_id,
                "name": f"benchmark {experiment_id}",
                "status": "running",
                "user_id": owner,
                "api_key_mode": mode,
            }
            for experiment_id, owner, mode in people.experiments
        ],
    )


def worker_command(app: str, queue: str, concurrency: int, name: str) -> list[str]:
    """A prefork Celery worker on one queue, as the Procfile runs it."""
    return celery_command(
        "worker",
        "-Q",
        queue,
        "-c",
        str(concurrency),
        "-P",
        "prefork",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{name}-{os.getpid()}@%h",
        "-l",
        "INFO",
        app=app,
    )


def children() -> ProcessGroup:
    """A group to start a run's children into (`with` it); their last lines are kept for errors."""
    return ProcessGroup(keep=KEPT_LINES)
