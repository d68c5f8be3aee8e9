"""Beat's expiry task, run by a real worker on the `stripe` queue."""

import asyncio
from collections.abc import Iterator

import pytest

from tests.grants.helpers import (
    Sessions,
    assert_reconciled,
    credits_of,
    expiry_rows,
    give,
    make_due,
    user_with_experiment,
)
from tests.workers import Worker, running_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(database_url: str, redis_prefix: str) -> Iterator[Worker]:
    with running_worker("stripe") as running:
        yield running


async def test_the_beat_task_expires_a_due_grant_on_the_stripe_queue(
    sessions: Sessions, worker: Worker
) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=10)
    grant_id = await give(sessions, user_id, 100)
    await make_due(sessions, grant_id)

    # Imported here: the Celery app reads the run's settings when its module is imported.
    from metering.tasks.app import app as celery
    from metering.tasks.grants import EXPIRE

    celery.send_task(EXPIRE)  # routed as beat sends it: no queue named
    for _ in range(600):
        if await expiry_rows(sessions, grant_id):
            break
        await asyncio.sleep(0.1)
    assert await expiry_rows(sessions, grant_id) == [-100], "\n".join(worker.log[-20:])
    assert await credits_of(sessions, user_id) == 10
    await assert_reconciled(sessions)
