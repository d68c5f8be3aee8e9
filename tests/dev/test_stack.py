"""The main job on a machine with no services, and on configured ones; nothing left behind."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support import free_port

METERING = str(Path(sys.executable).parent / "metering")


def _environment(*, configured: bool) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    if configured:
        environment.update(
            DATABASE_URL=os.environ["DATABASE_URL"], REDIS_URL=os.environ["REDIS_URL"]
        )
    return environment | {"COLUMNS": "200"}


def _survivors(marker: str, pids: set[int]) -> list[str]:
    """Processes still running that were started here: by pid, or naming `marker`."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if process.info["pid"] in pids or marker in cmdline:
            found.append(cmdline)
    return found


def _descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def test_demo_on_embedded_services_in_a_fresh_folder(
    tmp_path: Path, database_url: str, redis_prefix: str
) -> None:
    result = subprocess.run(
        [METERING, "demo", "--seconds", "2", "--rate", "40"],
        cwd=tmp_path,
        env=_environment(configured=False),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using embedded PostgreSQL and Redis" in result.stdout
    assert "events: 80 valid, 1 duplicate, 1 malformed" in result.stdout
    assert "reconcile: every balance equals the sum of its transactions" in result.stdout
    assert (tmp_path / ".metering" / "postgres").is_dir()
    assert _survivors(str(tmp_path), set()) == []


def test_demo_on_configured_services_starts_nothing_embedded(
    tmp_path: Path, database_url: str, redis_prefix: str
) -> None:
    result = subprocess.run(
        [METERING, "demo", "--seconds", "1", "--rate", "30"],
        cwd=tmp_path,
        env=_environment(configured=True),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(from DATABASE_URL and REDIS_URL)" in result.stdout
    assert "reconcile: every balance equals the sum of its transactions" in result.stdout
    assert not (tmp_path / ".metering").exists()


def test_dev_runs_the_stack_and_stops_it_all_on_ctrl_c(tmp_path: Path) -> None:
    port, flower_port = free_port(), free_port()
    dev = subprocess.Popen(
        [METERING, "dev", "--port", str(port), "--flower-port", str(flower_port)],
        cwd=tmp_path,
        env=_environment(configured=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            children |= _descendants(dev.pid)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json") as response:
                    assert response.status == 200
                    break
            except OSError:
                if dev.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("metering dev did not serve its web app")
                time.sleep(0.5)
        children |= _descendants(dev.pid)
        dev.send_signal(signal.SIGINT)
        output, _ = dev.communicate(timeout=90)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.communicate()
    assert "using embedded PostgreSQL and Redis" in output
    assert "stopping" in output
    assert _survivors(str(tmp_path), children) == []
