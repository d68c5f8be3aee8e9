"""`GET /metrics`: this host's Prometheus metrics plus the usage streams' backlog.

No authentication: Prometheus scrapes it; expose it on an internal network only. Stream gauges
are read from Redis at each scrape, the ledger's (reconcile's last result, Stripe events waiting)
from Redis and PostgreSQL; if either does not answer, the other metrics are still served.
"""

from fastapi import APIRouter, Response
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from metering.ops import redis_client
from metering.ops.logs import get_logger
from metering.ops.metrics import CONTENT_TYPE, LedgerCollector, StreamCollector, render
from metering.ops.reconcile_status import read_status
from metering.ops.redis_client import AsyncRedis
from metering.usage.stream_stats import read_backlog
from metering.web.deps import State

router = APIRouter(tags=["operations"])
log = get_logger(__name__)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text exposition (version 0.0.4)."""
    settings = state.settings
    collector: StreamCollector | None = None
    redis: AsyncRedis | None = None
    try:
        redis = await redis_client.open_client(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        backlog = await read_backlog(
            redis, settings.metering_redis_prefix, settings.metering_usage_shards
        )
        collector = backlog.collector()
    except (RedisError, OSError) as error:
        log.warning("stream gauges left out of /metrics: Redis did not answer", error=str(error))
    ledger: LedgerCollector | None = None
    try:
        async with state.sessions() as session:
            status = await read_status(redis, session, settings.metering_redis_prefix)
        ledger = LedgerCollector(status)
    except (RedisError, OSError, SQLAlchemyError) as error:
        log.warning("ledger gauges left out of /metrics", error=str(error))
    finally:
        if redis is not None:
            await redis.aclose()
    # Reads every process's files in the multiprocess folder: keep it off the event loop.
    body = await run_in_threadpool(render, collector, ledger)
    return Response(body, media_type=CONTENT_TYPE)
