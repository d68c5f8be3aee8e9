"""Real Celery worker processes for integration tests."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metering.dev import processes

READY_TIMEOUT_S = 60
STOP_GRACE_S = 30

# A `celery worker` subprocess; every line of its combined output is kept in `log`.
Worker = processes.Child


@contextmanager
def running_worker(
    queues: str, *, concurrency: int = 1, pool: str = "prefork", env: dict[str, str] | None = None
) -> Iterator[Worker]:
    """A worker on `queues`, ready to take tasks; warm shutdown (then SIGKILL) on exit."""
    worker = processes.start(
        f"worker -Q {queues}",
        processes.celery_command(
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-P",
            pool,
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"test-{queues}-{os.getpid()}-{time.monotonic_ns()}@%h",
            "-l",
            "INFO",
        ),
        env or {},
        keep=None,
        ready_marker=" ready.",
        ready_timeout_s=READY_TIMEOUT_S,
        cwd=Path(__file__).parent.parent,
    )
    try:
        yield worker
    finally:
        worker.stop(STOP_GRACE_S)
