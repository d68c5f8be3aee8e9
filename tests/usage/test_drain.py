"""The drain against the real Redis and PostgreSQL, called directly (no Celery): exactly once,
dead letters, conflicts, unknown experiments, budget stops, crash recovery, replay."""

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import update

from metering.budget import halt
from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.models import MAACExperiment
from metering.ops.settings import get_settings
from metering.usage import dead_letters, drain, streams
from metering.usage.producer import AsyncEmitter
from tests.factories import create_experiment, create_user, unique
from tests.usage.helpers import (
    Sessions,
    balance,
    calls_recorded,
    credits_used,
    event,
    expected_credits,
    raw,
    violations,
)


@pytest.fixture
def config(redis_prefix: str) -> drain.DrainConfig:
    """A drain configuration on streams of its own (a prefix per test), retries disabled."""
    base = drain.DrainConfig.from_settings(get_settings())
    prefix = f"{redis_prefix}:{unique('drain')}"
    return replace(base, prefix=prefix, unknown_retry_ms=0, claim_idle_ms=100)


async def owner(sessions: Sessions, credits: int = 10_000, mode: str = "system") -> tuple[str, str]:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, credits)
        experiment_id = await create_experiment(session, user_id, mode)
    return user_id, experiment_id


async def letters_of(
    redis: Redis, config: drain.DrainConfig
) -> list[dead_letters.DeadLetterRecord]:
    return await dead_letters.list_dead_letters(redis, config.prefix, 1000)


async def drain_all(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> drain.BatchReport:
    report = await drain.drain_stream(redis, sessions, config, 0)
    assert not report.more
    return report


async def test_events_from_emitter_and_raw_xadd_are_charged_once(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    user_id, experiment_id = await owner(sessions)
    documents = [event(experiment_id, n) for n in range(7)]
    emitter = AsyncEmitter(redis, prefix=config.prefix)
    await emitter.emit_many(documents[:4])
    stream = config.stream(0)
    for document in documents[4:]:
        await redis.xadd(stream, raw(document))
    await redis.xadd(stream, raw(documents[0]))  # a producer's retry

    report = await drain_all(redis, sessions, config)
    again = await drain_all(redis, sessions, config)

    assert (report.read, report.charged, report.duplicates, report.dead) == (8, 7, 1, 0)
    assert again.read == 0
    expected = expected_credits(documents)
    assert await calls_recorded(sessions, experiment_id) == 7
    assert await credits_used(sessions, experiment_id) == expected
    assert await balance(sessions, user_id) == 10_000 - expected
    assert await redis.xpending(stream, "metering") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
    assert await violations(sessions) == []


async def test_poison_entries_are_dead_lettered_and_the_rest_is_charged(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    _, experiment_id = await owner(sessions)
    good = [event(experiment_id, n) for n in range(3)]
    stream = config.stream(0)
    await redis.xadd(stream, raw(good[0]))
    await redis.xadd(stream, {"event": "{not json"})
    await redis.xadd(stream, raw(event(experiment_id, input_tokens=-5, event_id="neg-1")))
    await redis.xadd(stream, {"something": "else"})
    await redis.xadd(stream, raw(event(experiment_id, model="gpt-imaginary", event_id="unk-1")))
    await redis.xadd(stream, raw(good[1]))
    await redis.xadd(stream, raw({**good[1], "output_tokens": 1}))  # same id, other payload
    await redis.xadd(stream, raw(good[2]))

    report = await drain_all(redis, sessions, config)

    assert (report.charged, report.dead) == (3, 5)
    letters = await letters_of(redis, config)
    assert [(d.reason, d.event_id) for d in letters] == [
        ("invalid_event", ""),
        ("invalid_event", "neg-1"),
        ("missing_event", ""),
        ("unknown_model", "unk-1"),
        ("conflicting_duplicate", good[1]["event_id"]),
    ]
    assert "input_tokens" in letters[1].detail
    assert json.loads(letters[1].payload)["input_tokens"] == -5
    assert await credits_used(sessions, experiment_id) == expected_credits(good)
    assert await violations(sessions) == []


async def test_a_conflicting_redelivery_across_batches_is_dead_lettered(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    _, experiment_id = await owner(sessions)
    first = event(experiment_id)
    stream = config.stream(0)
    await redis.xadd(stream, raw(first))
    await drain_all(redis, sessions, config)
    await redis.xadd(stream, raw({**first, "input_tokens": 999_999}))
    await redis.xadd(stream, raw(first))

    report = await drain_all(redis, sessions, config)

    assert (report.duplicates, report.dead) == (1, 1)
    assert [d.reason for d in await letters_of(redis, config)] == ["conflicting_duplicate"]
    assert await credits_used(sessions, experiment_id) == expected_credits([first])


async def test_unknown_experiment_is_retried_then_charged_once_it_exists(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    config = replace(config, unknown_retry_ms=3_600_000)
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 500)
    document = event("exp-not-yet")
    await redis.xadd(config.stream(0), raw(document))

    first = await drain_all(redis, sessions, config)
    assert (first.charged, first.retrying, first.dead) == (0, 1, 0)

    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, user_id)
    late = event(experiment_id)
    await redis.xadd(config.stream(0), raw(late))
    await drain_all(redis, sessions, config)
    await _wait_idle(config)
    still_unknown = await drain.reclaim_stream(redis, sessions, config, 0)

    assert (still_unknown.read, still_unknown.retrying) == (1, 1)
    assert await credits_used(sessions, experiment_id) == expected_credits([late])

    await _wait_idle(config)
    expired = await drain.reclaim_stream(redis, sessions, replace(config, unknown_retry_ms=0), 0)
    assert (expired.read, expired.dead) == (1, 1)
    assert [d.reason for d in await letters_of(redis, config)] == ["unknown_experiment"]


async def test_an_event_older_than_the_window_is_dead_lettered_and_the_rest_charged(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    """Call records older than the window may have been archived: an event that old could be
    charged twice, so it is refused with its reason, and the batch's other events are charged."""
    user_id, experiment_id = await owner(sessions)
    now = datetime.now(UTC)
    recent = event(experiment_id, 0, occurred_at=(now - timedelta(days=34)).isoformat())
    old = event(experiment_id, 1, occurred_at=(now - timedelta(days=36)).isoformat())
    await AsyncEmitter(redis, prefix=config.prefix).emit_many([recent, old])
    report = await drain_all(redis, sessions, replace(config, window_days=35))
    assert (report.charged, report.dead) == (1, 1)
    (letter,) = await letters_of(redis, config)
    assert (letter.reason, letter.event_id) == ("outside_window", old["event_id"])
    assert "35-day exactly-once window" in letter.detail
    assert await calls_recorded(sessions, experiment_id) == 1
    assert await balance(sessions, user_id) == 10_000 - expected_credits([recent])


async def test_budget_stop_raises_the_halt_flag(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    user_id, experiment_id = await owner(sessions, credits=1)
    _, other = await owner(sessions)
    emitter = AsyncEmitter(redis, prefix=config.prefix)
    await emitter.emit_many([event(experiment_id, n) for n in range(3)])
    await emitter.emit(event(other))
    assert not await emitter.should_stop(experiment_id)

    report = await drain_all(redis, sessions, config)

    assert report.halted == [experiment_id]
    assert await balance(sessions, user_id) < 0
    assert await emitter.should_stop(experiment_id)
    assert not await emitter.should_stop(other)
    assert await halt.clear_halt(redis, config.prefix, user_id) == [experiment_id]
    assert not await emitter.should_stop(experiment_id)
    assert await violations(sessions) == []


async def test_entries_of_a_crashed_drainer_are_reclaimed_and_charged_once(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    _, experiment_id = await owner(sessions)
    documents = [event(experiment_id, n) for n in range(5)]
    await AsyncEmitter(redis, prefix=config.prefix).emit_many(documents)
    stream = config.stream(0)
    await streams.ensure_group(redis, stream)
    crashed = await streams.read_new(redis, stream, "test", 3)  # read, then died before charging
    await drain.process_batch(redis, sessions, config, crashed[:1])  # one charged and acked

    await drain_all(redis, sessions, config)
    await _wait_idle(config)
    reclaimed = await drain.reclaim_stream(redis, sessions, config, 0)

    assert (reclaimed.read, reclaimed.charged) == (2, 2)
    assert await calls_recorded(sessions, experiment_id) == 5
    assert await credits_used(sessions, experiment_id) == expected_credits(documents)
    assert (await redis.xpending(stream, "metering"))["pending"] == 0
    assert await violations(sessions) == []


async def test_an_entry_past_the_delivery_limit_is_dead_lettered(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    _, experiment_id = await owner(sessions)
    config = replace(config, max_deliveries=2)
    stream = config.stream(0)
    await redis.xadd(stream, raw(event(experiment_id)))
    await streams.ensure_group(redis, stream)
    await streams.read_new(redis, stream, "test", 10)
    for _ in range(2):
        await _wait_idle(config)
        await streams.claim_stalled(redis, stream, "test", config.claim_idle_ms, 10)
    await _wait_idle(config)

    report = await drain.reclaim_stream(redis, sessions, config, 0)

    assert (report.charged, report.dead) == (0, 1)
    (letter,) = await letters_of(redis, config)
    assert (letter.reason, letter.deliveries) == ("delivery_limit", 4)
    assert await calls_recorded(sessions, experiment_id) == 0


async def test_replaying_dead_letters_charges_only_what_was_not_charged(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    config = replace(config, unknown_retry_ms=0)
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100)
    waiting = event("exp-replayed")
    await redis.xadd(config.stream(0), raw(waiting))
    await drain_all(redis, sessions, config)
    (letter,) = await letters_of(redis, config)
    assert letter.reason == "unknown_experiment"

    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, user_id)
    fixed = event(experiment_id, event_id=waiting["event_id"])
    fixed_letter = replace(letter, payload=json.dumps(fixed))
    replayed = await dead_letters.replay_dead_letters(redis, config.prefix, 1, [fixed_letter])
    assert [dead_id for dead_id, _ in replayed] == [letter.dead_id]
    assert await letters_of(redis, config) == []
    await drain_all(redis, sessions, config)
    await dead_letters.replay_dead_letters(redis, config.prefix, 1, [fixed_letter])
    again = await drain_all(redis, sessions, config)

    assert again.duplicates == 1
    assert await calls_recorded(sessions, experiment_id) == 1
    assert await credits_used(sessions, experiment_id) == expected_credits([fixed])


async def test_unbilled_experiments_are_recorded_without_charging_anyone(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
    document = event(experiment_id)
    await redis.xadd(config.stream(0), raw(document))

    report = await drain_all(redis, sessions, config)

    assert (report.unbilled, report.charged) == (1, 0)
    assert await credits_used(sessions, experiment_id) == expected_credits([document])
    assert await violations(sessions) == []


async def test_acknowledged_entries_are_trimmed(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    _, experiment_id = await owner(sessions)
    await AsyncEmitter(redis, prefix=config.prefix).emit_many(
        [event(experiment_id, n) for n in range(300)]
    )
    await drain_all(redis, sessions, replace(config, batch_size=50))
    assert await redis.xlen(config.stream(0)) < 300


async def test_drains_of_one_stream_share_its_entries_and_charge_each_once(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    """Two worker processes (two consumers) drain one stream at once, with no lock: each entry
    goes to one of them, both take part, and every event is charged once."""
    user_id, experiment_id = await owner(sessions)
    documents = [event(experiment_id, n) for n in range(400)]
    await AsyncEmitter(redis, prefix=config.prefix).emit_many(documents)
    small = replace(config, batch_size=20)
    first, second = await asyncio.gather(
        drain.drain_stream(redis, sessions, replace(small, consumer="first"), 0),
        drain.drain_stream(redis, sessions, replace(small, consumer="second"), 0),
    )
    assert first.read > 0
    assert second.read > 0
    assert first.charged + second.charged == 400
    assert first.duplicates == second.duplicates == 0
    assert await credits_used(sessions, experiment_id) == expected_credits(documents)
    assert await balance(sessions, user_id) == 10_000 - expected_credits(documents)
    assert await violations(sessions) == []


async def test_consumers_long_idle_with_nothing_pending_are_forgotten(
    redis: Redis, config: drain.DrainConfig
) -> None:
    stream = config.stream(0)
    await streams.ensure_group(redis, stream)
    for _ in range(2):
        await redis.xadd(stream, {"event": "{}"})
    await streams.read_new(redis, stream, "holds-one", 1)
    (done,) = await streams.read_new(redis, stream, "acknowledged-all", 1)
    await streams.acknowledge(redis, stream, [done.entry_id])
    await asyncio.sleep(0.05)
    assert await streams.forget_idle_consumers(redis, stream, idle_ms=60_000) == []
    assert await streams.forget_idle_consumers(redis, stream, idle_ms=10) == ["acknowledged-all"]
    consumers = await redis.xinfo_consumers(stream, redis_keys.CONSUMER_GROUP)
    assert [c["name"] for c in consumers] == [b"holds-one"]


async def _wait_idle(config: drain.DrainConfig) -> None:
    await asyncio.sleep(config.claim_idle_ms / 1000 + 0.05)


def test_shard_out_of_range_is_refused(config: drain.DrainConfig) -> None:
    with pytest.raises(Exception, match="shard 1"):
        config.stream(1)
    assert redis_keys.usage_streams(config.prefix, 1) == [config.stream(0)]


async def test_budget_stop_halts_the_users_other_unfinished_experiments(
    redis: Redis, sessions: Sessions, config: drain.DrainConfig
) -> None:
    user_id, experiment_id = await owner(sessions, credits=1)
    async with session_scope(sessions) as session:
        idle = await create_experiment(session, user_id)
        finished = await create_experiment(session, user_id)
        await session.execute(
            update(MAACExperiment).where(MAACExperiment.id == finished).values(status="completed")
        )
    emitter = AsyncEmitter(redis, prefix=config.prefix)
    await emitter.emit_many([event(experiment_id, n) for n in range(3)])

    report = await drain_all(redis, sessions, config)

    assert sorted(report.halted) == sorted([experiment_id, idle])
    assert await emitter.should_stop(idle)
    assert not await emitter.should_stop(finished)
    assert sorted(await halt.clear_halt(redis, config.prefix, user_id)) == sorted(
        [experiment_id, idle]
    )


async def test_a_trim_never_drops_entries_another_drainer_reads_meanwhile(
    redis: Redis, config: drain.DrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drainer that lost its lease trims while another reads: the entries read in between are
    pending and uncharged, and must stay in the stream for a reclaim."""
    stream = config.stream(0)
    await streams.ensure_group(redis, stream)
    first = await redis.xadd(stream, {"event": "{}"})
    read = await streams.read_new(redis, stream, "test", 10)
    assert [e.entry_id for e in read] == [first.decode()]
    await redis.xack(stream, redis_keys.CONSUMER_GROUP, first)
    for n in range(3):
        await redis.xadd(stream, {"event": json.dumps({"n": n})})

    done: list[str] = []

    def then_another_drainer_reads(name: str) -> object:
        """The real command; after the first of the two reads, another drainer reads 3 entries."""
        real = getattr(redis, name)

        async def call(*args: object) -> object:
            result = await real(*args)
            if not done:
                done.append(name)
                assert len(await streams.read_new(redis, stream, "test", 10)) == 3
            return result

        return call

    for name in ("xinfo_groups", "xpending"):
        monkeypatch.setattr(redis, name, then_another_drainer_reads(name))
    await streams.trim_acknowledged(redis, stream)
    monkeypatch.undo()

    assert await redis.xlen(stream) >= 3
    pending = await redis.xpending(stream, redis_keys.CONSUMER_GROUP)
    assert pending["pending"] == 3
    claimed = await redis.xautoclaim(stream, redis_keys.CONSUMER_GROUP, "reclaimer", 0, "0-0")
    assert len(claimed[1]) == 3
    assert claimed[2] == []  # none deleted
