"""Low-balance alerts: one per crossing of the threshold, on Redis pub/sub and to a webhook.

A user "crosses" when a batch leaves their balance at or below `METERING_LOW_BALANCE_CREDITS`.
The crossing is remembered in Redis (`keys.low_balance_flag`, SET NX), so later batches of the
same low stretch stay silent; the flag is removed once the balance is seen above the threshold
again (a purchase, or any batch reporting it), which re-arms the alert.

The webhook body is the alert's JSON; header `Metering-Signature: t=<unix seconds>,v1=<hex>` where
v1 is HMAC-SHA256 of `"<t>.<body>"` keyed by `METERING_ALERT_WEBHOOK_SECRET` (the scheme Stripe
uses), and `Metering-Alert-Id` is the same for every retry of one alert.
"""

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering import keys
from metering.errors import PermanentError, TransientError
from metering.models import User
from metering.redis_client import AsyncRedis

SIGNATURE_HEADER = "Metering-Signature"
ALERT_ID_HEADER = "Metering-Alert-Id"
RETRIED_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True)
class LowBalanceAlert:
    """A user's balance (`credits`) fell to `threshold` credits or below at `crossed_at`."""

    alert_id: str
    user_id: str
    credits: int
    threshold: int
    crossed_at: str
    type: str = "low_balance"

    def document(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "LowBalanceAlert":
        return cls(**document)


async def note_balances(
    redis: AsyncRedis, prefix: str, balances: Mapping[str, int], threshold: int
) -> list[LowBalanceAlert]:
    """Record which users are low and publish an alert for each new crossing; re-arm the users
    seen above the threshold. One round trip, two with alerts to publish. Returns the new alerts."""
    if not balances:
        return []
    now = datetime.now(UTC).isoformat()
    candidates = {
        user_id: LowBalanceAlert(uuid.uuid4().hex, user_id, credits, threshold, now)
        for user_id, credits in sorted(balances.items())
        if credits <= threshold
    }
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in sorted(balances):
            flag = keys.low_balance_flag(prefix, user_id)
            if user_id in candidates:
                pipe.set(flag, candidates[user_id].alert_id, nx=True)
            else:
                pipe.delete(flag)
        replies = await pipe.execute()
    crossed = [
        candidates[user_id]
        for user_id, reply in zip(sorted(balances), replies, strict=True)
        if user_id in candidates and reply
    ]
    if crossed:
        async with redis.pipeline(transaction=False) as pipe:
            for alert in crossed:
                pipe.publish(keys.alerts_channel(prefix), json.dumps(alert.document()))
            await pipe.execute()
    return crossed


async def rearm_if_recovered(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    prefix: str,
    user_id: str,
    threshold: int,
) -> bool:
    """After a committed purchase: clear the user's crossed state if their balance is now above
    the threshold, so the next fall alerts again. Returns whether it was cleared."""
    async with sessions() as session:
        credits = await session.scalar(select(User.credits).where(User.id == user_id))
    if credits is None or credits <= threshold:
        return False
    return bool(await redis.delete(keys.low_balance_flag(prefix, user_id)))


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
