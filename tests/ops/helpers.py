"""Sending tasks to the workers an operations test started under its own prefix."""

from typing import Any

from celery import Celery

from metering.ops import redis_keys
from tests.support import REDIS_URL


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
