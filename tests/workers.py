"""Real Celery worker processes for integration tests."""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metering.dev.processes import celery_command

READY_TIMEOUT_S = 60


class Worker:
    """A `celery worker` subprocess; its combined output is kept in `log`."""

    def __init__(self, queues: str, concurrency: int, pool: str, env: dict[str, str]) -> None:
        self.log: list[str] = []
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            celery_command(
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
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parent.parent,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError("worker did not start:\n" + "".join(self.log[-40:]))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if " ready." in line:
                self._ready.set()

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and children), as a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_output()

    def stop(self) -> None:
        """Warm shutdown, escalating to SIGKILL after a grace period."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_output()

    def _close_output(self) -> None:
        """Let the reader reach the end of the output, then close the pipe."""
        self._reader.join(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def running_worker(
    queues: str, *, concurrency: int = 1, pool: str = "prefork", env: dict[str, str] | None = None
) -> Iterator[Worker]:
    worker = Worker(queues, concurrency, pool, env or {})
    try:
        yield worker
    finally:
        worker.stop()
