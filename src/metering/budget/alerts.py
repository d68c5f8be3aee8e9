"""Balance alerts, one per crossing, on Redis pub/sub and to a webhook; uncharged-usage alerts.

A user "crosses" when a batch leaves their balance at or below `METERING_LOW_BALANCE_CREDITS`
(a `low_balance` alert), or at or below the hard floor `BALANCE_FLOOR` (a `balance_floor` alert,
also logged at error level). Each crossing is remembered in Redis
(`redis_keys.low_balance_flag`, `redis_keys.balance_floor_flag`, SET NX), so later batches of the
same low stretch stay silent; a flag is removed once the balance is seen above its threshold again
(a purchase, or any batch reporting it), which re-arms that alert.

Usage the ledger refuses to charge (a balance that would pass the INTEGER limit of
`User.credits`, `balance_overflow`) is dead-lettered by the drain; `note_uncharged` logs each
such event at error level and publishes an `uncharged_usage` alert per experiment and reason.

Balance alerts also go to the webhook (uncharged-usage alerts do not): the body is the alert's
JSON; header `Metering-Signature: t=<unix seconds>,v1=<hex>` where v1 is HMAC-SHA256 of
`"<t>.<body>"` keyed by `METERING_ALERT_WEBHOOK_SECRET` (the scheme Stripe uses), and
`Metering-Alert-Id` is the same for every retry of one alert.
"""

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import PermanentError, TransientError
from metering.ops import redis_keys
from metering.ops.logs import get_logger
from metering.ops.models import User
from metering.ops.redis_client import AsyncRedis

SIGNATURE_HEADER = "Metering-Signature"
ALERT_ID_HEADER = "Metering-Alert-Id"
RETRIED_STATUSES = frozenset({408, 425, 429})
LOW_BALANCE = "low_balance"
BALANCE_FLOOR_CROSSED = "balance_floor"
UNCHARGED_USAGE = "uncharged_usage"
BALANCE_FLOOR = -100_000_000
"""Credits ($100,000 owed). At or below it the drain halts the user's experiments whatever
`METERING_HALT_THRESHOLD` says, and a `balance_floor` alert goes out. It lies far above the
INTEGER limit of `User.credits` (-2,147,483,648): over 2 billion credits of room for usage still
in flight, so the halt comes long before the ledger would have to refuse a debit."""

log = get_logger(__name__)


@dataclass(frozen=True)
class LowBalanceAlert:
    """A user's balance (`credits`) fell to `threshold` credits or below at `crossed_at`.

    `type` is `low_balance` for `METERING_LOW_BALANCE_CREDITS`, `balance_floor` for
    `BALANCE_FLOOR`."""

    alert_id: str
    user_id: str
    credits: int
    threshold: int
    crossed_at: str
    type: str = LOW_BALANCE

    def document(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "LowBalanceAlert":
        return cls(**document)


async def note_balances(
    redis: AsyncRedis, prefix: str, balances: Mapping[str, int], threshold: int
) -> list[LowBalanceAlert]:
    """Record which users are low (`threshold`) or at the floor (`BALANCE_FLOOR`), publish an
    alert for each new crossing and log floor crossings at error level; re-arm the users seen
    above a threshold. One round trip, two with alerts to publish. Returns the new alerts."""
    if not balances:
        return []
    now = datetime.now(UTC).isoformat()
    users = sorted(balances)
    kinds = (
        (LOW_BALANCE, threshold, redis_keys.low_balance_flag),
        (BALANCE_FLOOR_CROSSED, BALANCE_FLOOR, redis_keys.balance_floor_flag),
    )
    slots: list[LowBalanceAlert | None] = []
    async with redis.pipeline(transaction=False) as pipe:
        for kind, limit, flag in kinds:
            for user_id in users:
                credits = balances[user_id]
                if credits <= limit:
                    alert = LowBalanceAlert(uuid.uuid4().hex, user_id, credits, limit, now, kind)
                    pipe.set(flag(prefix, user_id), alert.alert_id, nx=True)
                    slots.append(alert)
                else:
                    pipe.delete(flag(prefix, user_id))
                    slots.append(None)
        replies = await pipe.execute()
    crossed = [
        alert for alert, reply in zip(slots, replies, strict=True) if alert is not None and reply
    ]
    for alert in crossed:
        if alert.type == BALANCE_FLOOR_CROSSED:
            log.error(
                "balance at or below the hard floor: the user's experiments are halted",
                user_id=alert.user_id,
                credits=alert.credits,
                floor=BALANCE_FLOOR,
            )
    await _publish(redis, prefix, [alert.document() for alert in crossed])
    return crossed


@dataclass(frozen=True)
class UnchargedUsage:
    """A priced usage event the ledger refused, so dead-lettered under `reason`; `credits` is
    what it would have cost on its own, rounded up (None when its experiment is gone)."""

    event_id: str
    experiment_id: str
    user_id: str | None
    reason: str
    credits: int | None
    detail: str


@dataclass(frozen=True)
class UnchargedUsageAlert:
    """A batch left `events` events of one experiment, worth `credits` credits, uncharged and
    dead-lettered under `reason` (e.g. `balance_overflow`); `detail` is the first one's."""

    alert_id: str
    experiment_id: str
    user_id: str | None
    reason: str
    events: int
    credits: int
    detail: str
    at: str
    type: str = UNCHARGED_USAGE

    def document(self) -> dict[str, Any]:
        return asdict(self)


async def note_uncharged(
    redis: AsyncRedis, prefix: str, uncharged: Sequence[UnchargedUsage]
) -> list[UnchargedUsageAlert]:
    """Log each uncharged event at error level and publish one alert per experiment and reason
    (one round trip). Returns the alerts published."""
    groups: dict[tuple[str, str], list[UnchargedUsage]] = {}
    for item in uncharged:
        log.error(
            "usage left uncharged and dead-lettered",
            event_id=item.event_id,
            experiment_id=item.experiment_id,
            user_id=item.user_id,
            reason=item.reason,
            credits=item.credits,
            detail=item.detail,
        )
        groups.setdefault((item.experiment_id, item.reason), []).append(item)
    now = datetime.now(UTC).isoformat()
    alerts = [
        UnchargedUsageAlert(
            alert_id=uuid.uuid4().hex,
            experiment_id=experiment_id,
            user_id=items[0].user_id,
            reason=reason,
            events=len(items),
            credits=sum(item.credits or 0 for item in items),
            detail=items[0].detail,
            at=now,
        )
        for (experiment_id, reason), items in sorted(groups.items())
    ]
    await _publish(redis, prefix, [alert.document() for alert in alerts])
    return alerts


async def _publish(redis: AsyncRedis, prefix: str, documents: Sequence[Mapping[str, Any]]) -> None:
    if not documents:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for document in documents:
            pipe.publish(redis_keys.alerts_channel(prefix), json.dumps(document))
        await pipe.execute()


async def rearm_if_recovered(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    user_id: str,
    threshold: int,
) -> bool:
    """After a committed purchase: clear the user's crossed states whose threshold the balance
    is now above (the floor's, then the low balance's), so the next fall alerts again. Returns
    whether the low-balance state was cleared."""
    async with sessions() as session:
        credits = await session.scalar(select(User.credits).where(User.id == user_id))
    if credits is None:
        return False
    if credits > BALANCE_FLOOR:
        await redis.delete(redis_keys.balance_floor_flag(prefix, user_id))
    if credits <= threshold:
        return False
    return bool(await redis.delete(redis_keys.low_balance_flag(prefix, user_id)))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Metering-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance_s` of now (for receivers)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


async def post_alert(
    url: str, secret: str, alert: LowBalanceAlert, *, timeout_s: float = 10.0
) -> int:
    """POST the signed alert; returns the status. Raises `TransientError` when worth retrying
    (no answer, 5xx, 408/425/429) and `PermanentError` when the receiver refuses it."""
    body = json.dumps(alert.document(), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        ALERT_ID_HEADER: alert.alert_id,
    }
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as error:
        raise TransientError(f"alert {alert.alert_id} not delivered: {error!r}") from error
    if response.status_code >= 500 or response.status_code in RETRIED_STATUSES:
        raise TransientError(
            f"alert {alert.alert_id}: the receiver answered {response.status_code}"
        )
    if response.status_code >= 400:
        raise PermanentError(
            f"alert {alert.alert_id}: the receiver refused it with {response.status_code}",
            code="alert_refused",
        )
    return response.status_code
