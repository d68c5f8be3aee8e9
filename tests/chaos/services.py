"""Private servers for the chaos suite: a Redis with AOF and a PostgreSQL cluster that a test may
pause, kill or restart without touching the machine's shared servers, and a `celery beat`."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from tests.support import free_port

READY_TIMEOUT_S = 30
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1:]
REPO = Path(__file__).parents[2]


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.05)


class PrivateRedis:
    """`redis-server` with AOF (`appendfsync everysec`) on a free port, data in a temp folder.

    `restart()` shuts it down cleanly (SHUTDOWN fsyncs the AOF); `crash()` SIGKILLs it, losing
    what was not yet fsynced; `start()` brings it back on the same port and data.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._answers, "redis-server")

    def client(self) -> SyncRedis:
        return SyncRedis.from_url(self.url)

    def shutdown(self) -> None:
        """SHUTDOWN: the server writes and fsyncs the AOF, then exits."""
        assert self.process is not None
        with self.client() as client:
            client.shutdown()  # redis-py swallows the connection the server closes
        self.process.wait(READY_TIMEOUT_S)

    def crash(self) -> None:
        """SIGKILL: whatever the AOF had not fsynced is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(READY_TIMEOUT_S)

    def _answers(self) -> bool:
        try:
            with SyncRedis.from_url(self.url, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except RedisError:  # refused, or LOADING while the AOF is replayed
            return False

    def restart(self) -> None:
        self.shutdown()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(READY_TIMEOUT_S)


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    directory = Path(tempfile.mkdtemp(prefix="metering-redis-"))
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb into a temp folder, a free port, trust auth), run
    as the `postgres` OS user when the tests run as root, since initdb refuses root."""

    def __init__(self, directory: Path) -> None:
        (self.bin,) = POSTGRES_BIN
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")

    def start(self) -> None:
        self._pg_ctl("start", "-l", str(self.directory / "log"))

    def restart(self) -> None:
        """A fast restart: open transactions are rolled back, clients disconnected."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.directory / "log"))

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "immediate")

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-o", options, *args)

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="metering-postgres-"))
    cluster = PrivatePostgres(directory)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def running_beat(env: dict[str, str], directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`celery beat` with `env` over the test's environment, its schedule file in `directory`."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "metering.tasks.app",
            "beat",
            "-s",
            str(directory / "beat-schedule"),
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)
