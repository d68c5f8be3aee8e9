"""Flower, started as the Procfile starts it, watches the run's broker (the app's key prefix)
behind basic auth: it sees a real usage worker and a drain task that worker finished."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metering.dev.processes import celery_command
from tests.ops.helpers import send
from tests.support import eventually
from tests.workers import running_worker

pytestmark = pytest.mark.slow

CREDENTIALS = ("ops", "flower-test-pass")


@pytest.fixture
def flower(ops_prefix: str, unused_port: int) -> Iterator[str]:
    """Flower on 127.0.0.1, credentials from FLOWER_BASIC_AUTH as in production."""
    process = subprocess.Popen(
        celery_command("flower", "--address=127.0.0.1", f"--port={unused_port}"),
        env={
            **os.environ,
            "METERING_REDIS_PREFIX": ops_prefix,
            "FLOWER_BASIC_AUTH": ":".join(CREDENTIALS),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    yield f"http://127.0.0.1:{unused_port}"
    process.terminate()
    process.wait(30)


async def test_flower_sees_the_worker_and_its_finished_drain(flower: str, ops_prefix: str) -> None:
    async with httpx.AsyncClient(base_url=flower, timeout=10) as client:

        async def up() -> bool:
            try:
                response = await client.get("/api/workers", auth=CREDENTIALS)
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await eventually(up, "Flower to answer")
        refused = await client.get("/api/workers")
        assert refused.status_code == 401
        wrong = await client.get("/api/tasks", auth=(CREDENTIALS[0], "wrong"))
        assert wrong.status_code == 401

        with running_worker("usage", env={"METERING_REDIS_PREFIX": ops_prefix}):
            send(ops_prefix, "metering.usage.drain", 0)
            workers: dict[str, Any] = {}
            tasks: dict[str, Any] = {}

            async def seen() -> bool:
                nonlocal workers, tasks
                workers = (await client.get("/api/workers?refresh=1", auth=CREDENTIALS)).json()
                tasks = (await client.get("/api/tasks", auth=CREDENTIALS)).json()
                return any(name.startswith("test-usage-") for name in workers) and any(
                    t["name"] == "metering.usage.drain" and t["state"] == "SUCCESS"
                    for t in tasks.values()
                )

            await eventually(seen, "Flower to see the worker and the finished drain")

    (worker_name,) = [name for name in workers if name.startswith("test-usage-")]
    (drain,) = [t for t in tasks.values() if t["name"] == "metering.usage.drain"]
    assert drain["worker"] == worker_name
    assert drain["args"] == "(0,)"
