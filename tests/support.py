"""Small helpers shared by tests across packages: the test Redis, waiting for a condition, a
free port, and the `metering` command run as an operator runs it."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ops.db import session_scope

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


async def wait_until_blocked_on_a_lock(
    sessions: async_sessionmaker[AsyncSession], limit_s: float = 10.0, backends: int = 1
) -> None:
    """Wait until `backends` backends of this database wait on a lock (the charge under test)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        async with session_scope(sessions) as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        if waiting is not None and waiting >= backends:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the charge never waited on a lock")
