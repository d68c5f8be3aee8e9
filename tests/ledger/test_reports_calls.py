"""Usage breakdowns read the call records: equal to the calls summed one by one."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import charging, reports
from metering.ops.db import session_scope
from metering.pricing import get_catalog
from metering.usage.parse import parse_entries
from metering.usage.price import price_events
from metering.usage.streams import Entry
from tests.factories import create_experiment, create_user
from tests.usage.helpers import raw
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]
CATALOG = get_catalog(None)
SEPTEMBER = datetime(2025, 9, 1, tzinfo=UTC)


def mixed(experiment_id: str) -> list[dict[str, Any]]:
    """Calls whose rates differ within one model: two price periods, both sides of a
    long-context threshold, time-of-day windows, two tiers of one model."""
    docs = []
    for n in range(24):
        docs.append(event(experiment_id, n, cached_input_tokens=10 * n, reasoning_tokens=n % 4))
    for n, at in enumerate((datetime(2024, 9, 1, tzinfo=UTC), SEPTEMBER)):
        docs.append(
            event(experiment_id, provider="openai", model="gpt-4o", occurred_at=at.isoformat())
        )
        docs[-1]["cached_input_tokens"] = 100 + n
    for prompt in (1_000, 300_000):
        april = datetime(2026, 4, 1, tzinfo=UTC).isoformat()
        docs.append(
            event(
                experiment_id,
                provider="openai",
                model="gpt-5.4",
                input_tokens=prompt,
                occurred_at=april,
            )
        )
    for hour in range(0, 24, 3):
        at = SEPTEMBER + timedelta(hours=hour)
        docs.append(
            event(
                experiment_id,
                provider="deepseek",
                model="deepseek-chat",
                occurred_at=at.isoformat(),
            )
        )
    for tier in ("standard", "batch"):
        docs.append(event(experiment_id, provider="openai", model="gpt-4o-mini", tier=tier))
    return docs


def expected_groups(
    docs: list[dict[str, Any]],
    charged: list[tuple[charging.UsageOutcome, list[charging.UsageCharge]]],
) -> dict[str, tuple[Any, ...]]:
    """Calls, USD, exact credits and credits by `provider/model`, summed call by call: each call
    priced alone at its own time, charged what the ledger said when it was charged."""
    entries = [Entry("s", f"1-{n}", raw(d)) for n, d in enumerate(docs)]
    parsed, _, _ = parse_entries(entries)
    priced, _ = price_events(parsed, CATALOG)
    usd = {p.parsed.event.event_id: p.cost.usd for p in priced}
    sums: dict[str, list[Any]] = {}
    for outcome, charges in charged:
        for charge in charges:
            key = f"{charge.call.provider}/{charge.call.model}"
            group = sums.setdefault(key, [0, Decimal(0), Decimal(0), 0])
            group[0] += 1
            group[1] += usd[charge.event_id]
            group[2] += charge.exact_credits
            group[3] -= outcome.amounts[charge.event_id]
    return {
        key: (calls, reports.exact_decimal(cost), reports.exact_decimal(exact), credits)
        for key, (calls, cost, exact, credits) in sums.items()
    }


async def test_breakdown_equals_the_per_call_usage_rows(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 10_000_000)
        experiment_id = await create_experiment(session, user_id)
    docs = mixed(experiment_id)
    charged = []
    for start in range(0, len(docs), 7):
        async with session_scope(sessions) as session:
            charged.append(
                await charge_events(session, docs[start : start + 7], markup=Decimal("1.5"))
            )

    async with session_scope(sessions) as session:
        usage = await reports.experiment_usage(session, experiment_id, catalog=CATALOG)
        by_user = await reports.usage_report(session, user=user_id, catalog=CATALOG)
        by_day = await reports.usage_report(
            session, user=user_id, by=reports.GroupBy.DAY, catalog=CATALOG
        )

    want = expected_groups(docs, charged)
    got = {g.key: (g.calls, g.cost_usd, g.exact_credits, g.credits) for g in usage.by_model}
    assert got == want
    assert {"openai/gpt-4o", "openai/gpt-5.4", "deepseek/deepseek-chat"} <= set(got)
    assert usage.by_model == by_user.groups
    assert usage.total.credits == usage.credits_used == by_day.total.credits
    assert usage.total.cost_usd == by_day.total.cost_usd == sum(w[1] for w in want.values())
    assert usage.total.calls == len(docs)


async def test_unbilled_calls_count_for_the_experiment_only(sessions: Sessions) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        billed = await create_experiment(session, user_id)
        unbilled = await create_experiment(session, None)
        await charge_events(session, [event(billed, n) for n in range(3)])
        await charge_events(session, [event(unbilled, n) for n in range(4)])
    async with session_scope(sessions) as session:
        free = await reports.usage_report(session, experiment_id=unbilled, catalog=CATALOG)
        charged = await reports.usage_report(session, user=user_id, catalog=CATALOG)
    assert (free.total.calls, free.total.unbilled_calls) == (4, 4)
    assert free.total.unbilled_credits == free.total.credits > 0
    assert (charged.total.calls, charged.total.unbilled_calls) == (3, 0)
