"""Acknowledge: after the commit, dead letters first, then XACK.

Dead letters are added before the acknowledgements, in a round trip of their own (on a cluster
the two streams may live on different nodes, and a pipeline across nodes keeps no order): a
failure in between can only dead-letter an entry twice, never lose it. Entries still waiting
for their experiment are left pending, for a later claim.
"""

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.typing import EncodableT, FieldT

from metering.ops import redis_keys as keys
from metering.ops.redis_client import AsyncRedis
from metering.usage.parse import DeadLetter
from metering.usage.streams import Entry, acknowledge, raw

log = logging.getLogger(__name__)


async def dead_letter_and_acknowledge(
    redis: AsyncRedis,
    prefix: str,
    entries: Sequence[Entry],
    dead: Sequence[DeadLetter],
    waiting: set[str],
) -> None:
    """Dead-letter `dead`, then acknowledge every entry of `entries` not in `waiting`."""
    if dead:
        dead_at = datetime.now(UTC).isoformat()
        position = {e.entry_id: i for i, e in enumerate(entries)}
        async with redis.pipeline(transaction=False) as pipe:
            for letter in sorted(dead, key=lambda d: position[d.entry.entry_id]):
                log.warning(
                    "dead-lettered %s %s: %s: %s",
                    letter.entry.stream,
                    letter.entry.entry_id,
                    letter.reason,
                    letter.detail,
                )
                pipe.xadd(keys.dead_letter_stream(prefix), dead_letter_fields(letter, dead_at))
            await pipe.execute()
    if entries:
        stream = entries[0].stream
        await acknowledge(redis, stream, [e.entry_id for e in entries if e.entry_id not in waiting])


def dead_letter_fields(letter: DeadLetter, dead_at: str) -> dict[FieldT, EncodableT]:
    """A dead-letter entry: the original payload (byte for byte), why, and where it came from."""
    return {
        "event": raw(letter.entry.payload()),
        "reason": letter.reason,
        "detail": raw(letter.detail),
        "event_id": raw(letter.event_id or ""),
        "stream": letter.entry.stream,
        "entry_id": letter.entry.entry_id,
        "deliveries": str(letter.entry.deliveries),
        "dead_at": dead_at,
    }
