"""How far behind the drains are: each usage stream's length, pending entries, lag and oldest
pending entry's age, and the dead letters. Read from Redis (XLEN, XINFO GROUPS, XPENDING) on
demand; `metering status` and `/metrics` both show it."""

import time
from dataclasses import dataclass, replace
from typing import Any

from metering.ops import redis_keys
from metering.ops.metrics import StreamCollector, StreamStats
from metering.ops.redis_client import AsyncRedis
from metering.usage.streams import text


@dataclass(frozen=True)
class Backlog:
    """Every usage stream of a shard count, and the length of the dead-letter stream."""

    streams: list[StreamStats]
    dead_letters: int

    def collector(self) -> StreamCollector:
        return StreamCollector(self.streams, self.dead_letters)


async def read_backlog(redis: AsyncRedis, prefix: str, shards: int) -> Backlog:
    """Two round trips, pipelined, whatever the shard count, and a third when entries are
    pending; a stream not yet created reads as empty (XINFO GROUPS on a missing key is an error,
    hence the EXISTS guard)."""
    streams = redis_keys.usage_streams(prefix, shards)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.exists(stream)
        pipe.xlen(redis_keys.dead_letter_stream(prefix))
        *exists, dead_letters = await pipe.execute()
    present = [s for s, found in zip(streams, exists, strict=True) if found]
    lengths: dict[str, int] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    if present:
        async with redis.pipeline(transaction=False) as pipe:
            for stream in present:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
            replies = await pipe.execute()
        lengths = {s: int(replies[2 * i]) for i, s in enumerate(present)}
        groups = {s: replies[2 * i + 1] for i, s in enumerate(present)}
    stats = []
    for stream in streams:
        pending, lag = 0, 0
        for group in groups.get(stream, []):
            if text(group["name"]) == redis_keys.CONSUMER_GROUP:
                pending = int(str(group["pending"]))
                # Redis answers nil when it cannot tell (after deletions inside the range).
                lag = int(str(group["lag"])) if group.get("lag") is not None else 0
        stats.append(StreamStats(stream, lengths.get(stream, 0), pending, lag))
    return Backlog(await _with_oldest_pending(redis, stats), int(dead_letters))


async def _with_oldest_pending(redis: AsyncRedis, stats: list[StreamStats]) -> list[StreamStats]:
    """Each stream's stats with the age of its oldest pending entry, from the entry's id (the
    time Redis added it, as the event age metric counts it)."""
    pending = [s for s in stats if s.pending]
    if not pending:
        return stats
    async with redis.pipeline(transaction=False) as pipe:
        for stream_stats in pending:
            pipe.xpending(stream_stats.stream, redis_keys.CONSUMER_GROUP)
        summaries = await pipe.execute()
    now_ms = time.time() * 1000
    ages = {}
    for stream_stats, summary in zip(pending, summaries, strict=True):
        if summary["min"] is not None:
            added_ms = int(text(summary["min"]).split("-")[0])
            ages[stream_stats.stream] = max(0.0, now_ms - added_ms) / 1000
    return [replace(s, oldest_pending_age_s=ages.get(s.stream, 0.0)) for s in stats]
