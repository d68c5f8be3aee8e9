"""Embedded PostgreSQL and Redis: used only when nothing is configured, never left behind."""

import asyncio
from pathlib import Path

import psutil
import pytest
from redis import Redis

from metering.dev.embedded import local_services
from metering.ops import migrate
from metering.ops.settings import Settings


def _unconfigured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    return Settings()


def _processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(data_dir) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_configured_services_start_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    with local_services(Settings(), tmp_path / "data") as services:
        assert not services.embedded
        assert services.database_url == "postgresql://postgres@127.0.0.1:5432/x"
    assert not (tmp_path / "data").exists()


def test_embedded_services_run_on_sockets_and_stop_on_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _unconfigured(monkeypatch, tmp_path)
    data_dir = tmp_path / "data"
    with local_services(settings, data_dir) as services:
        assert services.embedded
        redis = Redis.from_url(services.redis_url)
        redis.xadd("probe", {"n": "1"})
        assert redis.xlen("probe") == 1
        redis_pid = redis.info("server")["process_id"]
        redis.close()
        asyncio.run(migrate.ensure_database(services.database_url))
        migrate.upgrade(services.database_url)
        postgres = _processes_using(data_dir)
        assert any(p.name().startswith("postgres") for p in postgres)
        servers = [psutil.Process(redis_pid), *postgres]
        for server in servers:
            inet = [c for c in server.net_connections(kind="inet") if c.status == "LISTEN"]
            assert inet == [], f"{server.name()} listens on {inet}"
    assert not any(server.is_running() and server.status() != "zombie" for server in servers)

    with local_services(settings, data_dir) as again:
        assert asyncio.run(migrate.ensure_database(again.database_url)) is False, "data was kept"
    with local_services(settings, data_dir, reset=True) as fresh:
        assert asyncio.run(migrate.ensure_database(fresh.database_url)) is True, "data was reset"


def test_services_stop_when_the_block_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _unconfigured(monkeypatch, tmp_path)
    pids = []

    def fail_inside() -> None:
        with local_services(settings, tmp_path / "data") as services:
            pids.append(Redis.from_url(services.redis_url).info("server")["process_id"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    (pid,) = pids
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert _processes_using(tmp_path / "data") == []
