"""Operations tests: each module gets its own Redis prefix (streams, flags and Celery's queues),
so counters, stream gauges and alerts are exactly those of the module's own events."""

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from celery import Celery

from metering import keys
from tests.conftest import REDIS_URL

DEADLINE_S = 90


@pytest.fixture(scope="module")
def ops_prefix(redis_prefix: str) -> str:
    """A prefix under the run's, so the run's clean-up removes its keys too."""
    return f"{redis_prefix}:ops-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sender(prefix: str) -> Celery:
    """A Celery client that sends to the queues of workers started with `prefix`."""
    return Celery(
        "ops-tests",
        broker=REDIS_URL,
        broker_transport_options={"global_keyprefix": keys.celery_prefix(prefix)},
        task_serializer="json",
    )


def send(prefix: str, name: str, *args: Any, queue: str = "usage") -> None:
    client = sender(prefix)
    try:
        client.send_task(name, args=args, queue=queue)
    finally:
        client.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until `check()` holds; fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await check():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.2)
