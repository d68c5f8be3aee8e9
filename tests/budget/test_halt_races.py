"""Halt flags under races between usage batches and purchases, on the real PostgreSQL and Redis.

The rule: once the writers are done, an experiment is halted exactly when its owner's committed
balance is at or below the threshold. Each deterministic case pauses one side between reading a
balance and writing the flags, lets the other side run as far as it can, then resumes; the
stress case runs drains and purchases concurrently with random pauses at the same points.
"""

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.budget import halt
from metering.ops.db import session_scope
from metering.ops.settings import get_settings
from metering.stripe import processing
from metering.stripe.webhooks import ReceivedEvent, store_event
from metering.usage import drain
from metering.usage.producer import AsyncEmitter
from tests.chaos.helpers import waiting_on_a_lock
from tests.factories import create_experiment, create_user, unique
from tests.stripe.deliveries import checkout_session, record
from tests.stripe.deliveries import event as stripe_event
from tests.support import eventually
from tests.usage.helpers import Sessions, balance, event, violations

THRESHOLD = 0
BIG_INPUT_TOKENS = 4_000_000
"""A gpt-4o-mini call of this many input tokens costs 600 credits ($0.60)."""


@pytest.fixture
def config(redis_prefix: str) -> drain.DrainConfig:
    base = drain.DrainConfig.from_settings(get_settings())
    prefix = f"{redis_prefix}:{unique('races')}"
    return replace(base, prefix=prefix, shards=4, halt_threshold=THRESHOLD, unknown_retry_ms=0)


class Gate:
    """Wraps a `metering.budget.halt` function so a call can be held at its start (`hold_next`), or
    delayed at random (`jitter`), to pause a writer between its read and its write."""

    def __init__(self, original: Callable[..., Awaitable[Any]]) -> None:
        self.original = original
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.holding = False
        self.rng: random.Random | None = None

    def hold_next(self) -> None:
        self.holding = True
        self.held.clear()
        self.release.clear()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.holding:
            self.holding = False
            self.held.set()
            await self.release.wait()
        if self.rng is not None:
            await asyncio.sleep(self.rng.uniform(0, 0.02))
        return await self.original(*args, **kwargs)


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Gate]]:
    gates = {"raise": Gate(halt.raise_halt), "clear": Gate(halt.clear_halt)}
    monkeypatch.setattr(halt, "raise_halt", gates["raise"])
    monkeypatch.setattr(halt, "clear_halt", gates["clear"])
    yield gates
    for gate in gates.values():
        gate.release.set()


async def purchase(
    redis: Redis, sessions: Sessions, prefix: str, user_id: str, credits: int
) -> None:
    """A Checkout purchase as the Stripe task makes it: processed, then its after-commit step."""
    evt = stripe_event("checkout.session.completed", checkout_session(user_id, credits))
    async with session_scope(sessions) as session:
        await record(session, evt["data"]["object"])
        await store_event(session, ReceivedEvent(evt["id"], evt["type"], evt["livemode"], evt))
    processed = await processing.process_event(sessions, evt["id"], lock_timeout_ms=5_000)
    await processing.after_commit(redis, sessions, prefix, processed, THRESHOLD)


async def drain_everything(redis: Redis, sessions: Sessions, config: drain.DrainConfig) -> None:
    for shard in range(config.shards):
        report = await drain.drain_stream(redis, sessions, config, shard)
        assert not report.more


async def usage(emitter: AsyncEmitter, experiment_id: str, calls: int) -> None:
    await emitter.emit_many(
        event(experiment_id, 0, input_tokens=BIG_INPUT_TOKENS, output_tokens=0)
        for _ in range(calls)
    )


async def until_blocked_or_done(engine: AsyncEngine, task: asyncio.Task[Any], what: str) -> None:
    """Wait until `task` has finished or is waiting on a database lock (behind the held side)."""

    async def check() -> bool:
        return task.done() or bool(await waiting_on_a_lock(engine))

    await eventually(check, what)


async def assert_halts_match(
    redis: Redis, sessions: Sessions, prefix: str, owners: dict[str, str]
) -> None:
    for experiment_id, user_id in sorted(owners.items()):
        low = await balance(sessions, user_id) <= THRESHOLD
        halted = await halt.is_halted(redis, prefix, experiment_id)
        assert halted == low, (experiment_id, await balance(sessions, user_id), halted)


async def new_owner(
    sessions: Sessions, credits: int, experiments: int = 1
) -> tuple[str, list[str]]:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits)
        return user_id, [await create_experiment(session, user_id) for _ in range(experiments)]


async def test_a_halt_raised_from_a_balance_read_before_a_purchase_is_lifted_by_it(
    redis: Redis,
    sessions: Sessions,
    engine: AsyncEngine,
    config: drain.DrainConfig,
    gates: dict[str, Gate],
) -> None:
    user_id, (experiment_id,) = await new_owner(sessions, credits=100)
    await usage(AsyncEmitter(redis, prefix=config.prefix, shards=config.shards), experiment_id, 1)

    gates["raise"].hold_next()
    draining = asyncio.create_task(drain_everything(redis, sessions, config))
    await eventually(_is_set(gates["raise"].held), "the drain about to raise the halt")
    buying = asyncio.create_task(purchase(redis, sessions, config.prefix, user_id, 5_000))
    await until_blocked_or_done(engine, buying, "the purchase")
    gates["raise"].release.set()
    await asyncio.gather(draining, buying)

    assert await balance(sessions, user_id) == 100 - 600 + 5_000
    assert not await halt.is_halted(redis, config.prefix, experiment_id)
    assert await violations(sessions) == []


async def test_a_halt_raised_while_a_purchase_lifts_halts_stays(
    redis: Redis,
    sessions: Sessions,
    engine: AsyncEngine,
    config: drain.DrainConfig,
    gates: dict[str, Gate],
) -> None:
    user_id, (first, second) = await new_owner(sessions, credits=100, experiments=2)
    emitter = AsyncEmitter(redis, prefix=config.prefix, shards=config.shards)
    await usage(emitter, first, 1)
    await drain_everything(redis, sessions, config)
    assert await halt.is_halted(redis, config.prefix, first)

    gates["clear"].hold_next()
    buying = asyncio.create_task(purchase(redis, sessions, config.prefix, user_id, 1_000))
    await eventually(_is_set(gates["clear"].held), "the purchase about to lift the halts")
    await usage(emitter, second, 2)  # 1,200 credits: below zero again
    draining = asyncio.create_task(drain_everything(redis, sessions, config))
    await until_blocked_or_done(engine, draining, "the drain")
    gates["clear"].release.set()
    await asyncio.gather(draining, buying)

    assert await balance(sessions, user_id) == 100 - 600 + 1_000 - 1_200
    assert await halt.is_halted(redis, config.prefix, first)
    assert await halt.is_halted(redis, config.prefix, second)


async def test_a_purchase_that_leaves_the_balance_at_or_below_the_threshold_keeps_the_halts(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    user_id, (experiment_id,) = await new_owner(sessions, credits=100)
    await usage(AsyncEmitter(redis, prefix=config.prefix, shards=config.shards), experiment_id, 2)
    await drain_everything(redis, sessions, config)
    assert await halt.is_halted(redis, config.prefix, experiment_id)

    await purchase(redis, sessions, config.prefix, user_id, 600)  # -1,100 + 600 = -500

    assert await balance(sessions, user_id) == -500
    assert await halt.is_halted(redis, config.prefix, experiment_id)
    await purchase(redis, sessions, config.prefix, user_id, 500)  # exactly the threshold
    assert await balance(sessions, user_id) == THRESHOLD
    assert await halt.is_halted(redis, config.prefix, experiment_id)
    await purchase(redis, sessions, config.prefix, user_id, 500)
    assert not await halt.is_halted(redis, config.prefix, experiment_id)


async def test_drains_and_purchases_racing_at_random_leave_exactly_the_low_users_halted(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig, gates: dict[str, Gate]
) -> None:
    rng = random.Random(20)
    for gate in gates.values():
        gate.rng = rng
    owners: dict[str, str] = {}
    users = []
    for _ in range(3):
        user_id, experiments = await new_owner(sessions, credits=700, experiments=3)
        users.append(user_id)
        owners.update(dict.fromkeys(experiments, user_id))
    emitter = AsyncEmitter(redis, prefix=config.prefix, shards=config.shards)

    for _ in range(8):
        work = []
        for user_id in users:
            mine = [e for e, owner in owners.items() if owner == user_id]
            for _ in range(rng.randrange(1, 3)):
                await usage(emitter, rng.choice(mine), 1)
            work += [
                purchase(redis, sessions, config.prefix, user_id, rng.choice([500, 600, 900]))
                for _ in range(rng.randrange(0, 3))
            ]
        work += [drain.drain_stream(redis, sessions, config, s) for s in range(config.shards)]
        rng.shuffle(work)
        await asyncio.gather(*work)
        await drain_everything(redis, sessions, config)  # what a skipped (locked) drain left
        await assert_halts_match(redis, sessions, config.prefix, owners)
    assert await violations(sessions) == []


def _is_set(flag: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return flag.is_set()

    return check
