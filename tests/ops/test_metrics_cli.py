"""`metering metrics serve` for a worker-only host, and `metering metrics reset-dir`."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import eventually

pytestmark = pytest.mark.slow

METERING = str(Path(sys.executable).parent / "metering")


def metering(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [METERING, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def served(tmp_path: Path, unused_port: int, ops_prefix: str) -> Iterator[str]:
    folder = tmp_path / "metrics"
    process = metering(
        "metrics",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(unused_port),
        env={"PROMETHEUS_MULTIPROC_DIR": str(folder), "METERING_REDIS_PREFIX": ops_prefix},
    )
    yield f"http://127.0.0.1:{unused_port}"
    process.terminate()
    process.communicate(timeout=30)


async def test_serve_answers_with_the_hosts_metrics_and_the_streams(
    served: str, ops_prefix: str
) -> None:
    async with httpx.AsyncClient(base_url=served) as client:

        async def up() -> bool:
            try:
                return (await client.get("/metrics")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, "metrics serve")
        response = await client.get("/metrics")
        missing = await client.get("/other")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert f'metering_stream_lag{{stream="{ops_prefix}:usage"}} 0.0' in response.text
    assert "metering_halt_flags_raised_total 0.0" in response.text
    assert missing.status_code == 404


def test_reset_dir_removes_files_of_dead_processes_only(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = folder / f"counter_{dead.stdout.strip()}.db"
    live = folder / f"counter_{os.getpid()}.db"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    process = metering("metrics", "reset-dir", "--dir", str(folder), env={})
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert not stale.exists()
    assert live.exists()


def test_reset_dir_needs_a_folder() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [METERING, "metrics", "reset-dir"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr
