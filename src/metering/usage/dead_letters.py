"""The dead-letter stream: listing its entries and replaying them to their usage stream."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metering.ops import redis_keys as keys
from metering.ops.redis_client import AsyncRedis
from metering.usage.event import STREAM_FIELD
from metering.usage.streams import fields, raw, text


@dataclass(frozen=True)
class DeadLetterRecord:
    """One entry of the dead-letter stream. `dead_id` is its id there."""

    dead_id: str
    reason: str
    detail: str
    event_id: str
    stream: str
    entry_id: str
    deliveries: int
    dead_at: str
    payload: str


async def list_dead_letters(
    redis: AsyncRedis, prefix: str, count: int = 100, ids: Sequence[str] = ()
) -> list[DeadLetterRecord]:
    """The oldest `count` dead letters, or exactly those with the given ids."""
    stream = keys.dead_letter_stream(prefix)
    if ids:
        async with redis.pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.xrange(stream, dead_id, dead_id, 1)
            rows: list[Any] = [row for found in await pipe.execute() for row in found]
    else:
        rows = list(await redis.xrange(stream, "-", "+", count) or [])
    return [_record(text(dead_id), fields(values)) for dead_id, values in rows]


async def replay_dead_letters(
    redis: AsyncRedis, prefix: str, shards: int, records: Sequence[DeadLetterRecord]
) -> list[tuple[str, str]]:
    """Add each dead letter's payload back to its experiment's usage stream and remove it from
    the dead-letter stream. Harmless for events already charged (their ids are recorded).
    Returns (dead letter id, new entry id) pairs."""
    if not records:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            experiment_id = payload_experiment_id(record.payload)
            stream = (
                keys.stream_for_experiment(prefix, shards, experiment_id)
                if experiment_id is not None
                else keys.usage_stream(prefix, 0 if shards > 1 else None)
            )
            pipe.xadd(stream, {STREAM_FIELD: raw(record.payload)})
        added = await pipe.execute()
    # Removed only once every payload is back (the streams may be on other cluster nodes).
    await redis.xdel(keys.dead_letter_stream(prefix), *(r.dead_id for r in records))
    return [(r.dead_id, text(entry_id)) for r, entry_id in zip(records, added, strict=True)]


def payload_experiment_id(payload: str) -> str | None:
    """The experiment id inside a dead letter's payload, for routing a replay to its shard."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    value = document.get("experiment_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _record(dead_id: str, values: Mapping[str, str]) -> DeadLetterRecord:
    return DeadLetterRecord(
        dead_id=dead_id,
        reason=values.get("reason", ""),
        detail=values.get("detail", ""),
        event_id=values.get("event_id", ""),
        stream=values.get("stream", ""),
        entry_id=values.get("entry_id", ""),
        deliveries=int(values.get("deliveries", "1")),
        dead_at=values.get("dead_at", ""),
        payload=values.get("event", ""),
    )
