"""`metering stripe events` and `metering stripe replay` as an operator runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.db import session_scope
from metering.models import User
from metering.stripe.webhooks import ReceivedEvent, store_event
from tests.factories import create_user
from tests.stripe.deliveries import charge, checkout_session, event

METERING = str(Path(sys.executable).parent / "metering")


def metering(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: os.environ[key] for key in ("DATABASE_URL", "REDIS_URL", "METERING_REDIS_PREFIX")}
    return subprocess.run(
        [METERING, "stripe", *args],
        env={**env, "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def store(sessions: async_sessionmaker[AsyncSession], evt: dict[str, Any]) -> None:
    async with session_scope(sessions) as session:
        await store_event(session, ReceivedEvent(evt["id"], evt["type"], False, evt))


async def test_replay_processes_a_failed_event_and_what_it_wakes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session)
    checkout = checkout_session("user-not-yet", 10_000)
    purchase = event("checkout.session.completed", checkout)
    refund = event("charge.refunded", charge(checkout["payment_intent"], 1_000, 1_000))
    await store(sessions, refund)
    await store(sessions, purchase)

    waiting = metering("replay", refund["id"])
    failed = metering("replay", purchase["id"])
    listed = json.loads(metering("events", "--failed", "--json", "--limit", "10000").stdout)
    table = metering("events", "--failed").stdout

    assert "awaiting_purchase" in waiting.stdout
    assert failed.returncode == 2
    assert "unknown_user" in failed.stderr
    (row,) = [r for r in listed if r["id"] == purchase["id"]]
    assert (row["outcome"], row["attempts"], row["processed_at"]) == ("failed", 1, None)
    assert "unknown_user" in row["last_error"]
    assert refund["id"] not in {r["id"] for r in listed}
    assert purchase["id"] in table

    # The operator fixes the cause (here: the session named a user that did not exist).
    checkout.update(client_reference_id=user_id, metadata={"userId": user_id, "credits": "10000"})
    fixed = event("checkout.session.completed", checkout)
    await store(sessions, fixed)
    replayed = json.loads(metering("replay", fixed["id"], "--json").stdout)
    again = metering("replay", fixed["id"])

    assert [(r["event_id"], r["outcome"]) for r in replayed] == [
        (fixed["id"], "purchased"),
        (refund["id"], "clawed_back"),
    ]
    assert "already processed" in again.stdout
    async with session_scope(sessions) as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert user.credits == 0


def test_replay_of_an_unknown_event_fails_clearly() -> None:
    result = metering("replay", "evt_unknown")

    assert result.returncode == 2
    assert "no stored Stripe event evt_unknown" in result.stderr
