"""The async world of one worker process: its event loop, database engine and Redis client.

Created lazily in the process that uses it, so a prefork child never inherits its parent's
connections (the runtime remembers the pid that made it). Celery's `worker_process_init` and
`worker_process_shutdown` signals create and dispose it eagerly; tasks reach it through
`run(...)`, which drives a coroutine to completion on this process's one loop.
"""

import asyncio
import gc
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from metering.ops import redis_client
from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.redis_client import AsyncRedis
from metering.ops.settings import Settings, get_settings

T = TypeVar("T")
YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between collections of young objects (Python's default is 700)."""


@dataclass
class Runtime:
    """Clients owned by one process; never shared across a fork."""

    pid: int
    settings: Settings
    runner: asyncio.Runner
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: AsyncRedis

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        async def dispose() -> None:
            await self.redis.aclose()
            await self.engine.dispose()

        try:
            self.runner.run(dispose())
        finally:
            self.runner.close()


_current: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime, made on first use (and again after a fork)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        settings = get_settings()
        engine = create_engine(settings.database_url)
        # The engine and client bind to a loop on first use, which is always this runner's loop.
        _current = Runtime(
            pid=os.getpid(),
            settings=settings,
            runner=asyncio.Runner(),
            engine=engine,
            sessions=make_sessionmaker(engine),
            redis=redis_client.connect(settings.redis_url),
        )
    return _current


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on this process's event loop."""
    return get_runtime().run(coroutine)


def close_runtime() -> None:
    """Dispose this process's clients and loop, if it made them."""
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.close()
    _current = None


def tune_garbage_collection() -> None:
    """Set the collector for batch work, once the process has started up.

    What the process holds by then (modules, the price catalog, clients) is frozen out of every
    later collection, and young objects are collected every 10,000 allocations instead of 700: a
    batch of 500 events makes tens of thousands of short-lived objects that die with it, and
    scanning them every 700 allocations cost the worker about a sixth of its CPU per event.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
