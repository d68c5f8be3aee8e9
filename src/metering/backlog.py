"""How far behind the drains are: each usage stream's length, pending entries and lag, and the
dead letters. Read from Redis (XLEN, XINFO GROUPS) on demand; `metering status` and `/metrics`
both show it."""

from dataclasses import dataclass

from metering import keys
from metering.metrics import StreamCollector, StreamStats
from metering.redis_client import AsyncRedis


@dataclass(frozen=True)
class Backlog:
    """Every usage stream of a shard count, and the length of the dead-letter stream."""

    streams: list[StreamStats]
    dead_letters: int

    def collector(self) -> StreamCollector:
        return StreamCollector(self.streams, self.dead_letters)


async def read_backlog(redis: AsyncRedis, prefix: str, shards: int) -> Backlog:
    """Two round trips, pipelined, whatever the shard count; a stream not yet created reads as
    empty (XINFO GROUPS on a missing key is an error, hence the EXISTS guard)."""
    streams = keys.usage_streams(prefix, shards)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.exists(stream)
        pipe.xlen(keys.dead_letter_stream(prefix))
        *exists, dead_letters = await pipe.execute()
    present = [s for s, found in zip(streams, exists, strict=True) if found]
    lengths: dict[str, int] = {}
    groups: dict[str, list[dict[str, object]]] = {}
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
            if _text(group["name"]) == keys.CONSUMER_GROUP:
                pending = int(str(group["pending"]))
                # Redis answers nil when it cannot tell (after deletions inside the range).
                lag = int(str(group["lag"])) if group.get("lag") is not None else 0
        stats.append(StreamStats(stream, lengths.get(stream, 0), pending, lag))
    return Backlog(stats, int(dead_letters))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
