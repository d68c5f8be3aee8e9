"""The usage streams in Redis: the consumer group, reading, claiming, acknowledging, trimming.

Every worker process reads a stream as a consumer of its own (`consumer_name`) of the group
`metering`: XREADGROUP hands each new entry to one consumer, so processes share one stream with
no lock between them. An entry stays pending until it is acknowledged after its batch commits;
the entries of a consumer that died are claimed by another past the claim idle time
(XAUTOCLAIM), and charged, or found charged, then.
"""

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from metering.ops import redis_keys as keys
from metering.ops.redis_client import AsyncRedis
from metering.usage.event import STREAM_FIELD

FORGET_CONSUMER_IDLE_MS = 24 * 3600 * 1000
"""A consumer with nothing pending that has not read for a day is removed from the group (a
worker process long gone); one still alive is added back by its next read."""


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: its stream, id, raw fields, and deliveries so far (>= 1).

    Field bytes that are not UTF-8 are held as lone surrogates (`surrogateescape`)."""

    stream: str
    entry_id: str
    fields: Mapping[str, str]
    deliveries: int = 1

    @property
    def added_at_ms(self) -> int:
        """When the entry was added (the millisecond part of its stream id)."""
        return int(self.entry_id.split("-", 1)[0])

    def payload(self) -> str:
        """The entry's event JSON, or all its fields as JSON when it has no `event` field."""
        raw = self.fields.get(STREAM_FIELD)
        return raw if raw is not None else json.dumps(dict(self.fields), sort_keys=True)


def consumer_name() -> str:
    """This process's consumer name: host and process id, unique among the running workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def ensure_group(redis: AsyncRedis, stream: str) -> None:
    """Create the consumer group (and the stream) if missing; it starts at the stream's start."""
    try:
        await redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def read_new(
    redis: AsyncRedis, stream: str, consumer: str, count: int, block_ms: int | None = None
) -> list[Entry]:
    """Up to `count` entries never delivered before (XREADGROUP >); when there are none, waits
    up to `block_ms` for some (not at all when None)."""
    reply: Any = await redis.xreadgroup(
        keys.CONSUMER_GROUP, consumer, {stream: ">"}, count=count, block=block_ms
    )
    if not reply:
        return []
    return [Entry(stream, text(i), fields(f)) for i, f in reply[0][1] if f is not None]


async def claim_stalled(
    redis: AsyncRedis,
    stream: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    cursor: str = "0-0",
) -> tuple[str, list[Entry]]:
    """Claim entries pending longer than `min_idle_ms` (XAUTOCLAIM), with their delivery counts.

    Returns the cursor to continue from ("0-0" when the whole pending list was scanned).
    """
    reply = await redis.xautoclaim(
        stream, keys.CONSUMER_GROUP, consumer, min_idle_ms, start_id=cursor, count=count
    )
    next_cursor, claimed = text(reply[0]), [(i, f) for i, f in reply[1] if f is not None]
    if not claimed:
        return next_cursor, []
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id, _ in claimed:
            pipe.xpending_range(stream, keys.CONSUMER_GROUP, entry_id, entry_id, 1)
        pending = await pipe.execute()
    deliveries = {
        text(rows[0]["message_id"]): int(rows[0]["times_delivered"]) for rows in pending if rows
    }
    entries = [Entry(stream, text(i), fields(f), deliveries.get(text(i), 1)) for i, f in claimed]
    return next_cursor, entries


async def acknowledge(redis: AsyncRedis, stream: str, entry_ids: Sequence[str]) -> None:
    if entry_ids:
        await redis.xack(stream, keys.CONSUMER_GROUP, *entry_ids)


async def trim_acknowledged(redis: AsyncRedis, stream: str) -> None:
    """Drop entries every consumer of our group has acknowledged (XTRIM MINID, approximate).

    Entries still pending, or not yet delivered, are kept. The group's last delivered id is read
    before its pending entries: an entry delivered in between is then either pending or past that
    id, so a concurrent read can never have its entries trimmed.
    """
    groups = await redis.xinfo_groups(stream)
    summary = await redis.xpending(stream, keys.CONSUMER_GROUP)
    ours = next((g for g in groups if text(g["name"]) == keys.CONSUMER_GROUP), None)
    if ours is None:
        return
    last = text(ours["last-delivered-id"])
    if summary["pending"]:
        keep_from = text(summary["min"])
    else:
        milliseconds, sequence = last.split("-")
        keep_from = f"{milliseconds}-{int(sequence) + 1}"
    if keep_from != "0-1":
        await redis.xtrim(stream, minid=keep_from, approximate=True)


_FORGET_IDLE = """
local gone = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(gone, info['name'])
  end
end
return gone
"""


async def forget_idle_consumers(
    redis: AsyncRedis, stream: str, idle_ms: int = FORGET_CONSUMER_IDLE_MS
) -> list[str]:
    """Remove the group's consumers with no pending entry that have been idle past `idle_ms`
    (each worker process is a consumer: restarts leave old ones behind). Returns their names.

    One script, so no read can give a consumer entries between the check and the removal
    (removing a consumer drops its pending entries)."""
    names = await redis.eval(_FORGET_IDLE, 1, stream, keys.CONSUMER_GROUP, str(idle_ms))
    return [text(name) for name in names]


def text(value: bytes | str) -> str:
    """UTF-8 text; bytes that are not UTF-8 are kept as lone surrogates, so that such an entry is
    dead-lettered (`parse.parse_entries`) instead of failing its whole batch on every read."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def raw(value: str) -> bytes:
    """The bytes `text` read; a lone surrogate from a JSON escape is written escaped."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def fields(values: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {text(k): text(v) for k, v in values.items()}
