"""Drives the naive design: one task sent per event, timed from the first send to the last commit.

The last commit is the first poll (every `POLL_S`) that finds every event's USAGE row committed.
"""

import asyncio
import time
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import bindparam, func, select

from metering.bench import environment
from metering.bench.environment import Services
from metering.bench.naive_app import QUEUE, READY, TASK, make_app
from metering.bench.workload import Workload
from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.models import CreditTransaction

POLL_S = 0.05


@dataclass(frozen=True)
class NaiveRun:
    rows: int
    seconds: float


async def run(services: Services, work: Workload, concurrency: int, timeout_s: float) -> NaiveRun:
    """Start a naive worker, send one task per entry, wait for every row; stop the worker."""
    experiments = [e[0] for e in work.population.experiments]
    engine = create_engine(services.database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    count = (
        select(func.count())
        .select_from(CreditTransaction)
        .where(CreditTransaction.experiment_id.in_(bindparam("ids", expanding=True)))
    )
    producer = make_app(services.redis_url, services.redis_prefix)
    try:
        with environment.children() as started:
            started.start(
                "naive-worker",
                environment.worker_command("metering.bench.naive_app", QUEUE, concurrency, "naive"),
                services.environment(),
                ready_marker=READY,
            )
            began = time.time()
            await asyncio.to_thread(_send_all, producer, work.payloads)
            deadline = time.monotonic() + timeout_s
            while True:
                async with sessions() as session:
                    done = await session.scalar(count, {"ids": experiments}) or 0
                if done >= work.unique_events:
                    return NaiveRun(int(done), time.time() - began)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"naive design: {done} of {work.unique_events} rows "
                        f"within {timeout_s:.0f} s"
                    )
                await asyncio.sleep(POLL_S)
    finally:
        producer.close()
        await engine.dispose()


def _send_all(producer: Celery, payloads: list[str]) -> None:
    for payload in payloads:
        producer.send_task(TASK, args=(payload,), queue=QUEUE)
