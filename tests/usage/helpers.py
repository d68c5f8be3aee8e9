"""Shared pieces of the pipeline tests: event documents, expected charges, database reads."""

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger.reconcile import find_violations
from metering.ops.models import MAACExperiment, UsageCall, User
from metering.pricing import charge_exact_credits, get_catalog
from metering.pricing.money import whole_credits
from metering.usage.event import UsageEvent
from metering.usage.price import token_usage

Sessions = async_sessionmaker[AsyncSession]
OCCURRED_AT = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
]


def event(experiment_id: str, n: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid event document (cycling through MODELS by `n`)."""
    provider, model = MODELS[n % len(MODELS)]
    document: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex}",
        "experiment_id": experiment_id,
        "provider": provider,
        "model": model,
        "input_tokens": 1000 + 37 * n,
        "output_tokens": 200 + 11 * n,
        "occurred_at": OCCURRED_AT.isoformat(),
    }
    document.update(changes)
    return document


def raw(document: dict[str, Any]) -> dict[str, str]:
    """Stream entry fields, as a non-Python producer would send them."""
    return {"event": json.dumps(document)}


def expected_credits(documents: Iterable[dict[str, Any]], api_key_mode: str = "system") -> int:
    """Credits an experiment is charged for these events (distinct ids): ceil of the exact sum."""
    catalog = get_catalog(None)
    total = Decimal(0)
    seen = set()
    for document in documents:
        parsed = UsageEvent.model_validate(document)
        if parsed.event_id in seen:
            continue
        seen.add(parsed.event_id)
        cost = catalog.price_call(
            parsed.provider,
            parsed.model,
            token_usage(parsed),
            parsed.occurred_at,
            parsed.effective_tier,
        )
        total += charge_exact_credits(cost, api_key_mode, Decimal(1), Decimal(0))
    return whole_credits(total)


async def calls_recorded(sessions: Sessions, experiment_id: str) -> int:
    """The experiment's call records: one per event charged (or recorded unbilled)."""
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count()).where(UsageCall.experiment_id == experiment_id)
            )
            or 0
        )


async def credits_used(sessions: Sessions, experiment_id: str) -> int:
    async with sessions() as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        return experiment.credits_used


async def balance(sessions: Sessions, user_id: str) -> int:
    async with sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.credits


async def violations(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return [str(v) for v in await find_violations(session)]
