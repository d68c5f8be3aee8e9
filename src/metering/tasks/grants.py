"""Grant tasks: (from beat) expire the grants past their expiry."""

from typing import Any

from metering.budget import halt
from metering.grants.expire import expire_all_due
from metering.ops.logs import get_logger
from metering.tasks import runtime
from metering.tasks.app import app

EXPIRE = "metering.grants.expire"

log = get_logger(__name__)


@app.task(name=EXPIRE, acks_late=True)
def expire() -> dict[str, Any]:
    """Remove what is left of every grant past its expiry, once; then raise the halt flags of
    users whose balance that brought low."""
    rt = runtime.get_runtime()
    expired = rt.run(expire_all_due(rt.sessions))
    users = sorted({e.user_id for e in expired if e.credits})
    if users:
        rt.run(
            halt.sync_halts(
                rt.redis,
                rt.sessions,
                rt.settings.metering_redis_prefix,
                users,
                rt.settings.metering_halt_threshold,
            )
        )
        log.info("grants expired", grants=len(expired), users=len(users))
    return {"expired": len(expired), "credits": sum(e.credits for e in expired)}
