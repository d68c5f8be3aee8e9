"""Sending tasks to the workers an operations test started under its own prefix."""

from typing import Any

import httpx
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from metering.ops import redis_keys
from metering.ops.settings import Settings
from metering.web import create_app
from tests.support import REDIS_URL
from tests.web.helpers import serve


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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(settings: Settings) -> tuple[httpx.Response, Samples]:
    async for client in serve(create_app(settings)):
        response = await client.get("/metrics")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
