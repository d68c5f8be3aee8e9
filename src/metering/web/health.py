"""`GET /healthz`: are PostgreSQL, Redis and the Celery broker reachable? No token needed.

200 when all are, 503 naming those that are not. Each check is bounded by a short timeout so a
hung dependency makes the probe fail rather than hang; error text is redacted (URLs can carry
passwords).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import text

from metering.ops import redis_client
from metering.ops.logs import get_logger, redact_text
from metering.web.deps import State, WebState

router = APIRouter(tags=["health"])
log = get_logger(__name__)
CHECK_TIMEOUT_S = 2.0


class ComponentStatus(BaseModel):
    status: Literal["ok", "unavailable"]
    latency_ms: int
    error: str | None = None


class HealthResponse(BaseModel):
    """`status` is "ok" only when every component is; `unavailable` names those that are not."""

    status: Literal["ok", "unavailable"]
    components: dict[str, ComponentStatus]
    unavailable: list[str]


async def _database(state: WebState) -> None:
    async with state.sessions() as session:
        await session.execute(text("SELECT 1"))


async def _ping(url: str) -> None:
    client = await redis_client.open_client(
        url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S
    )
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _check(probe: Callable[[], Awaitable[None]]) -> ComponentStatus:
    started = time.monotonic()
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
        error = None
    except TimeoutError:
        error = f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as failure:  # any failure means unhealthy; it is reported, not raised
        error = redact_text(f"{type(failure).__name__}: {failure}")[:300]
    latency_ms = round((time.monotonic() - started) * 1000)
    return ComponentStatus(
        status="ok" if error is None else "unavailable", latency_ms=latency_ms, error=error
    )


@router.get(
    "/healthz",
    responses={503: {"model": HealthResponse, "description": "a component is unreachable"}},
)
async def healthz(state: State, response: Response) -> HealthResponse:
    """Reachability of the database, Redis (usage streams) and the Celery broker."""
    names = ("database", "redis", "broker")
    results = await asyncio.gather(
        _check(lambda: _database(state)),
        _check(lambda: _ping(state.settings.redis_url)),
        _check(lambda: redis_client.check_broker_async(state.settings.broker_url)),
    )
    components = dict(zip(names, results, strict=True))
    down = [name for name, result in components.items() if result.status != "ok"]
    report = HealthResponse(
        status="unavailable" if down else "ok", components=components, unavailable=down
    )
    if down:
        log.warning("health check failed", unavailable=down)
        response.status_code = 503
    return report
