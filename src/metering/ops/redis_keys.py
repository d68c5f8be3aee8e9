"""Every Redis key the service uses, in one place. All start with the configured prefix.

Sharded usage streams carry the shard number as a Redis Cluster hash tag (`metering:usage:{3}`),
so each shard's stream and its consumer group live whole on one cluster node. No command or
script names two keys of different slots: every other key is only ever used alone.
"""

import zlib

CONSUMER_GROUP = "metering"


def usage_stream(prefix: str, shard: int | None = None) -> str:
    """The usage stream; with shards, the stream of shard `shard`."""
    return f"{prefix}:usage" if shard is None else f"{prefix}:usage:{{{shard}}}"


def usage_streams(prefix: str, shards: int) -> list[str]:
    """All usage streams for a shard count (one unsharded stream when `shards` is 1)."""
    if shards == 1:
        return [usage_stream(prefix)]
    return [usage_stream(prefix, shard) for shard in range(shards)]


def stream_for_experiment(prefix: str, shards: int, experiment_id: str) -> str:
    """The stream a producer writes an experiment's events to: `crc32(experiment_id) mod N`."""
    if shards == 1:
        return usage_stream(prefix)
    return usage_stream(prefix, zlib.crc32(experiment_id.encode()) % shards)


def dead_letter_stream(prefix: str) -> str:
    return f"{prefix}:usage:dead"


def halt_flag(prefix: str, experiment_id: str) -> str:
    """Set while an experiment must stop (its owner's balance reached the halt threshold)."""
    return f"{prefix}:halt:{experiment_id}"


def halted_experiments(prefix: str, user_id: str) -> str:
    """The set of a user's experiments whose halt flag is set, so a purchase can clear them."""
    return f"{prefix}:halted:{user_id}"


def low_balance_flag(prefix: str, user_id: str) -> str:
    """Set while a user is below the low-balance threshold and has been alerted about it."""
    return f"{prefix}:low-balance:{user_id}"


def balance_floor_flag(prefix: str, user_id: str) -> str:
    """Set while a user is at or below the hard balance floor and has been alerted about it."""
    return f"{prefix}:balance-floor:{user_id}"


def reconcile_result(prefix: str) -> str:
    """The result of the last `metering reconcile` (JSON: violations, checked_at), for /metrics."""
    return f"{prefix}:reconcile:last"


def alerts_channel(prefix: str) -> str:
    """The pub/sub channel alerts are published on (one JSON message per alert)."""
    return f"{prefix}:alerts"


def celery_prefix(prefix: str) -> str:
    """Prefix of every key Celery's Redis broker writes."""
    return f"{prefix}:celery:"
