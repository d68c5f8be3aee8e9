"""Operations tests: each module gets its own Redis prefix (streams, flags and Celery's queues),
so counters, stream gauges and alerts are exactly those of the module's own events."""

import uuid
from typing import Any

import pytest
from celery import Celery

from metering.ops import redis_keys
from tests.conftest import REDIS_URL


@pytest.fixture(scope="module")
def ops_prefix(redis_prefix: str) -> str:
    """A prefix under the run's, so the run's clean-up removes its keys too."""
    return f"{redis_prefix}:ops-{uuid.uuid4().hex[:8]}"


def sender(prefix: str) -> Celery:
    """A Celery client that sends to the queues of workers started with `prefix`."""
    return Celery(
        "ops-tests",
        broker=REDIS_URL,
        broker_transport_options={"global_keyprefix": redis_keys.celery_prefix(prefix)},
        task_serializer="json",
    )


def send(prefix: str, name: str, *args: Any, queue: str = "usage") -> None:
    client = sender(prefix)
    try:
        client.send_task(name, args=args, queue=queue)
    finally:
        client.close()
