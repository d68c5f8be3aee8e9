"""The Redis client factory on the shared plain Redis (the cluster side is in tests/cluster)."""

import redis.asyncio

from metering.ops import redis_client
from tests.support import REDIS_URL


async def test_a_plain_redis_gets_a_plain_client() -> None:
    assert not await redis_client.is_cluster_async(REDIS_URL)
    client = await redis_client.open_client(REDIS_URL)
    assert type(client) is redis.asyncio.Redis
    assert await client.ping()
    await client.aclose()


def test_a_plain_broker_is_accepted_and_a_broker_that_is_not_a_redis_is_not_asked() -> None:
    redis_client.check_broker(REDIS_URL)
    redis_client.check_broker("amqp://guest@127.0.0.1:1//")  # nothing listens there
