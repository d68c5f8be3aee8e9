"""Small helpers shared by tests across packages: the test Redis, waiting for a condition, a
free port, and the `metering` command run as an operator runs it."""

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

DEADLINE_S = 120.0
REDIS_URL = os.environ.get("METERING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, *, every_s: float = 0.05
) -> None:
    """Wait until `check()` holds, asking every `every_s`; fail after `DEADLINE_S`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await check():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(every_s)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


METERING = str(Path(sys.executable).parent / "metering")


def metering(
    *args: str, database_url: str, operator: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command; `operator` is the METERING_OPERATOR of the operator's shell."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "METERING_REDIS_PREFIX": os.environ["METERING_REDIS_PREFIX"],
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "200",
    }
    if operator is not None:
        env["METERING_OPERATOR"] = operator
    return subprocess.run(
        [METERING, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
