"""Small helpers shared by tests across packages: the test Redis, waiting for a condition, a
free port."""

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

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
