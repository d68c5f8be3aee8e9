"""Every Redis client of the service is made here, from a URL naming a plain Redis or any node of
a Redis Cluster; nothing else needs setting.

Which of the two it is is asked once per client made (`INFO cluster`, `cluster_enabled:1`). A
cluster gets redis-py's cluster client, which learns the slot map from that node, sends each
command to the node owning its key, follows redirections and retries with backoff while a node is
away. Every multi-key command and script of the service keeps its keys in one slot (hash tags, see
`metering.ops.redis_keys`); pipelines may span nodes (the cluster client splits them, so a
pipeline is never atomic and the code never relies on the order in which its commands run).

The Celery broker is a plain Redis: Celery's Redis transport knows nothing of slots, so a broker
URL naming a cluster node is refused with `ClusterBrokerError`.
"""

from typing import Any, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from metering.errors import PermanentError

AsyncRedis: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster

CLUSTER_RETRIES = 8
"""Attempts of a cluster command beyond the first, backing off from 50 ms to at most 1 s each
(about 5 s in all): enough to ride through a node restart or a slot moving."""
_BACKOFF = {"cap": 1.0, "base": 0.05}
PROBE_TIMEOUT_S = 5.0
"""The detection round trip gives up after this long, unless the caller set its own timeouts."""


class ClusterBrokerError(PermanentError):
    """`CELERY_BROKER_URL` (or `REDIS_URL`, its default) names a node of a Redis Cluster."""

    code = "cluster_broker"


def _probe_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "socket_timeout": options.get("socket_timeout", PROBE_TIMEOUT_S),
        "socket_connect_timeout": options.get("socket_connect_timeout", PROBE_TIMEOUT_S),
    }


def _cluster_enabled(info: Any) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def is_cluster(url: str, **options: Any) -> bool:
    """Whether `url` names a node of a Redis Cluster (one blocking round trip).

    A server that refuses `INFO` (renamed by a managed service) is taken as a plain Redis.
    """
    with redis.Redis.from_url(url, **_probe_options(options)) as probe:
        try:
            return _cluster_enabled(probe.info("cluster"))
        except ResponseError:
            return False


async def is_cluster_async(url: str, **options: Any) -> bool:
    """`is_cluster` without blocking the event loop."""
    probe = redis.asyncio.Redis.from_url(url, **_probe_options(options))
    try:
        return _cluster_enabled(await probe.info("cluster"))
    except ResponseError:
        return False
    finally:
        await probe.aclose()


def connect(url: str, **options: Any) -> AsyncRedis:
    """An asyncio client for `url`, a cluster client when it names a cluster node. Detection is
    one blocking round trip: call it outside a running event loop (`open_client` inside one)."""
    return _async_client(url, is_cluster(url, **options), options)


async def open_client(url: str, **options: Any) -> AsyncRedis:
    """`connect` for code already running on an event loop."""
    return _async_client(url, await is_cluster_async(url, **options), options)


def connect_sync(url: str, **options: Any) -> SyncRedis:
    """A synchronous client for `url`, a cluster client when it names a cluster node."""
    if is_cluster(url, **options):
        return redis.cluster.RedisCluster.from_url(
            url, retry=Retry(ExponentialWithJitterBackoff(**_BACKOFF), CLUSTER_RETRIES), **options
        )
    return redis.Redis.from_url(url, **options)


def _async_client(url: str, cluster: bool, options: dict[str, Any]) -> AsyncRedis:
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            url,
            retry=AsyncRetry(ExponentialWithJitterBackoff(**_BACKOFF), CLUSTER_RETRIES),
            **options,
        )
    return redis.asyncio.Redis.from_url(url, **options)


def _broker_as_redis_url(url: str) -> str | None:
    """The broker's Kombu URL as redis-py spells it; None for a broker that is not a Redis."""
    scheme, _, rest = url.partition("://")
    if scheme in ("redis", "rediss"):
        return url
    if scheme == "redis+socket":
        return f"unix://{rest}"
    return None


def check_broker(url: str) -> None:
    """Raise `ClusterBrokerError` when the Celery broker URL names a Redis Cluster node."""
    redis_url = _broker_as_redis_url(url)
    if redis_url is not None and is_cluster(redis_url):
        raise ClusterBrokerError(broker_message())


async def check_broker_async(url: str) -> None:
    """`check_broker` without blocking the event loop; for a Redis broker, also proves that it
    answers."""
    redis_url = _broker_as_redis_url(url)
    if redis_url is not None and await is_cluster_async(redis_url):
        raise ClusterBrokerError(broker_message())


def broker_message() -> str:
    return (
        "the Celery broker URL names a node of a Redis Cluster, and Celery's broker must be a "
        "plain Redis: set CELERY_BROKER_URL to a plain Redis (REDIS_URL may stay the cluster)"
    )
