"""What a processed Stripe event sets off once committed, the same from the `stripe` worker and
from `metering stripe replay`."""

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget import alerts
from metering.ops.redis_client import AsyncRedis
from metering.ops.settings import Settings
from metering.stripe import processing
from metering.stripe.processing import Processed


async def follow_up(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    processed: Processed,
) -> list[str]:
    """Bring the buyer's halt flags in line with the committed balance, then re-arm the balance
    alerts it is now above. Returns the experiment ids lifted. The events the purchase woke
    (`processed.wake_event_ids`) are the caller's to process next."""
    prefix = settings.metering_redis_prefix
    lifted = await processing.after_commit(
        redis, sessions, prefix, processed, settings.metering_halt_threshold
    )
    if processed.user_id is not None:
        await alerts.rearm_if_recovered(
            redis, sessions, prefix, processed.user_id, settings.metering_low_balance_credits
        )
    return lifted
