"""The TypeScript package end to end: its events, sent by node to the real Redis over shards,
are drained by the real Python drain into the real ledger, priced exactly as the same calls sent
by the Python emitter, and a repeated event is charged once."""

import json
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from metering.ops import redis_keys
from metering.ops.db import session_scope
from metering.ops.models import UsageCall
from metering.ops.settings import get_settings
from metering.usage import drain
from metering.usage.event import parse_event
from metering.usage.producer import AsyncEmitter, event_from_usage
from tests.clients.cases import USAGE
from tests.factories import create_experiment, create_user, unique
from tests.support import REDIS_URL
from tests.usage.helpers import Sessions, balance, credits_used, expected_credits, violations

CLIENT = Path(__file__).parents[2] / "clients" / "typescript"
EMIT = CLIENT / "dist" / "test-support" / "emit-usage.js"
SHARDS = 4
CREDITS = 1_000_000
OCCURRED_AT = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4", "google": "gemini-2.5-flash"}
CALLS = [case for case in USAGE["usage"] if "tokens" in case]
"""Every usage object of the shared cases that makes a valid event."""


@pytest.fixture(scope="module")
def node_emitter() -> Path:
    """The package built from its sources (`npm ci` must have installed its dependencies)."""
    npm = shutil.which("npm")
    assert npm, "Node.js 20.15 or later with npm is needed"
    assert (CLIENT / "node_modules").is_dir(), f"run `npm ci` in {CLIENT} (scripts/test does)"
    subprocess.run([npm, "run", "--silent", "build"], cwd=CLIENT, check=True)
    return EMIT


def emit_with_node(emitter: Path, prefix: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    request = {"redisUrl": REDIS_URL, "prefix": prefix, "shards": SHARDS, "calls": calls}
    done = subprocess.run(
        ["node", str(emitter)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def node_call(case: dict[str, Any], event_id: str, experiment_id: str) -> dict[str, Any]:
    return {
        "provider": case["provider"],
        "usage": case["usage"],
        "options": {
            "eventId": event_id,
            "experimentId": experiment_id,
            "model": MODELS[case["provider"]],
            "occurredAt": OCCURRED_AT.isoformat(),
        },
    }


CALL_FACTS = (
    "provider",
    "model",
    "tier",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "exact_credits",
)


async def rows(sessions: Sessions, experiment_id: str) -> dict[str, dict[str, Any]]:
    """Each call record's facts and cost by event id."""
    async with sessions() as session:
        found = await session.scalars(
            select(UsageCall).where(UsageCall.experiment_id == experiment_id)
        )
        return {row.event_id: {key: getattr(row, key) for key in CALL_FACTS} for row in found}


async def test_typescript_events_are_charged_like_python_ones_and_once(
    node_emitter: Path, redis: Redis, sessions: Sessions, redis_prefix: str
) -> None:
    config = replace(
        drain.DrainConfig.from_settings(get_settings()),
        prefix=f"{redis_prefix}:{unique('ts')}",
        shards=SHARDS,
    )
    async with session_scope(sessions) as session:
        user_id = await create_user(session, CREDITS)
        ts_experiment = await create_experiment(session, user_id)
        py_experiment = await create_experiment(session, user_id)

    ts_ids = [f"ts-{n}-{unique('evt')}" for n in range(len(CALLS))]
    calls = [node_call(case, i, ts_experiment) for case, i in zip(CALLS, ts_ids, strict=True)]
    sent = emit_with_node(node_emitter, config.prefix, [*calls, calls[0]])  # the last: a retry
    python_events = [
        event_from_usage(
            case["provider"],
            case["usage"],
            event_id=f"py-{n}",
            experiment_id=py_experiment,
            model=MODELS[case["provider"]],
            occurred_at=OCCURRED_AT,
        )
        for n, case in enumerate(CALLS)
    ]
    await AsyncEmitter(redis, prefix=config.prefix, shards=SHARDS).emit_many(python_events)

    # Node's events are on the shard Python routes the experiment to, and are Python's events.
    stream = redis_keys.stream_for_experiment(config.prefix, SHARDS, ts_experiment)
    entries = await redis.xrange(stream)
    assert [entry_id.decode() for entry_id, _ in entries][: len(sent["ids"])] == sent["ids"]
    from_node = [parse_event(fields[b"event"]) for _, fields in entries[: len(sent["ids"])]]
    assert [e.event_id for e in from_node] == [*ts_ids, ts_ids[0]]
    for ts_event, py_event in zip(from_node, python_events, strict=False):
        same = {"event_id", "experiment_id"}
        assert ts_event.model_dump(exclude=same) == py_event.model_dump(exclude=same)

    report = drain.BatchReport()
    for shard in range(SHARDS):
        report.add(await drain.drain_stream(redis, sessions, config, shard))
    assert (report.read, report.charged, report.duplicates, report.dead) == (
        2 * len(CALLS) + 1,
        2 * len(CALLS),
        1,
        0,
    )

    charged_ts, charged_py = (
        await rows(sessions, ts_experiment),
        await rows(sessions, py_experiment),
    )
    assert sorted(charged_ts) == sorted(ts_ids)
    for n, event_id in enumerate(ts_ids):
        assert charged_ts[event_id] == charged_py[f"py-{n}"], CALLS[n]["name"]
    expected = expected_credits([e.model_dump(mode="json") for e in python_events])
    assert expected > 0
    assert await credits_used(sessions, ts_experiment) == expected
    assert await credits_used(sessions, py_experiment) == expected
    assert await balance(sessions, user_id) == CREDITS - 2 * expected
    assert await violations(sessions) == []
