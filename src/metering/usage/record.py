"""Record: priced events to call records and ledger rows, in one database transaction.

`record` reads the batch's experiments (owner and apiKeyMode), turns costs into charges in
credits and hands them to `charging.charge_usage`, which writes a call record per new event and one
USAGE row per experiment, provider, model and tier. Events the ledger refuses are isolated by
halving, so one bad event never stops its batch.
"""

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget.alerts import UnchargedUsage
from metering.errors import PermanentError
from metering.ledger import charging
from metering.ops.db import run_in_transaction, session_scope
from metering.pricing import charge_exact_credits
from metering.pricing.money import whole_credits
from metering.usage.parse import DeadLetter, Parsed, conflict
from metering.usage.price import Priced, to_charges


@dataclass(frozen=True)
class Rates:
    """What turns a cost in USD into credits, beside the experiment's apiKeyMode."""

    markup: Decimal
    platform_fee_usd_per_million: Decimal


@dataclass
class Recorded:
    """The committed result of recording a group of priced events."""

    outcome: charging.UsageOutcome = field(default_factory=charging.UsageOutcome)
    unknown: list[Priced] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    uncharged: list[UnchargedUsage] = field(default_factory=list)

    def add(self, other: "Recorded") -> None:
        self.outcome.charged += other.outcome.charged
        self.outcome.unbilled += other.outcome.unbilled
        self.outcome.amounts.update(other.outcome.amounts)
        self.outcome.balances.update(other.outcome.balances)
        self.outcome.owners.update(other.outcome.owners)
        self.unknown += other.unknown
        self.dead += other.dead
        self.duplicates += other.duplicates
        self.uncharged += other.uncharged


async def record(
    sessions: async_sessionmaker[AsyncSession], rates: Rates, priced: Sequence[Priced]
) -> Recorded:
    """Record `priced` in one transaction; if the ledger refuses it, halve until the event it
    refuses is alone, and dead-letter that one. Almost always one transaction."""
    if not priced:
        return Recorded()
    try:
        return await _record_once(sessions, rates, priced)
    except PermanentError as error:
        if len(priced) == 1:
            return await _refused(sessions, rates, priced[0], error)
    first, second = split(priced)
    merged = await record(sessions, rates, first)
    merged.add(await record(sessions, rates, second))
    return merged


def split(items: Sequence[Any]) -> tuple[Sequence[Any], Sequence[Any]]:
    """Two halves, for isolating an item that fails a whole batch."""
    middle = len(items) // 2
    return items[:middle], items[middle:]


async def _record_once(
    sessions: async_sessionmaker[AsyncSession], rates: Rates, priced: Sequence[Priced]
) -> Recorded:
    async def work(session: AsyncSession) -> Recorded:
        experiments = await charging.experiment_owners(
            session, sorted({p.parsed.event.experiment_id for p in priced})
        )
        modes = {e: mode for e, (_, mode) in experiments.items()}
        known = [p for p in priced if p.parsed.event.experiment_id in modes]
        charges, dead = to_charges(known, modes, rates.markup, rates.platform_fee_usd_per_million)
        owners = {e: owner for e, (owner, _) in experiments.items()}
        outcome = await charging.charge_usage(session, charges, owners)
        late = set(outcome.unknown_experiments)
        unknown = [
            p
            for p in priced
            if p.parsed.event.experiment_id not in modes or p.parsed.event.event_id in late
        ]
        conflicts, duplicates = await _conflicts(session, [p.parsed for p in known], outcome)
        return Recorded(outcome, unknown, dead + conflicts, duplicates)

    return await run_in_transaction(sessions, work)  # run again if an owner changed meanwhile


async def _refused(
    sessions: async_sessionmaker[AsyncSession], rates: Rates, item: Priced, error: PermanentError
) -> Recorded:
    """The one event the ledger refuses: dead-lettered, with what it would have cost (its
    experiment's owner and apiKeyMode read again, the batch's transaction being rolled back)."""
    event = item.parsed.event
    async with session_scope(sessions) as session:
        found = (await charging.experiment_owners(session, [event.experiment_id])).get(
            event.experiment_id
        )
    owner, credits = None, None
    if found is not None:
        owner, mode = found
        with suppress(PermanentError):  # an apiKeyMode changed since: the cost stays unknown
            exact = charge_exact_credits(
                item.cost, mode, rates.markup, rates.platform_fee_usd_per_million
            )
            credits = whole_credits(exact)
    uncharged = UnchargedUsage(
        event.event_id, event.experiment_id, owner, error.code, credits, error.message
    )
    letter = DeadLetter(item.parsed.entry, error.code, error.message, event.event_id)
    return Recorded(dead=[letter], uncharged=[uncharged])


async def _conflicts(
    session: AsyncSession, parsed: Sequence[Parsed], outcome: charging.UsageOutcome
) -> tuple[list[DeadLetter], int]:
    """Split the events not recorded by this batch into conflicts (a payload other than the one
    recorded first, dead-lettered) and harmless duplicates (counted). One query, if any."""
    recorded_now = set(outcome.charged) | set(outcome.unbilled)
    candidates = recorded_now | set(outcome.duplicates)
    others: list[Parsed] = []
    for item in parsed:
        if item.event.event_id in recorded_now:
            recorded_now.discard(item.event.event_id)  # the first of its id: the one recorded
        elif item.event.event_id in candidates:
            others.append(item)
    if not others:
        return [], 0
    recorded = await charging.recorded_digests(session, sorted({p.event.event_id for p in others}))
    conflicts = [
        conflict(p.entry, p.event.event_id)
        for p in others
        if not charging.same_payload(recorded.get(p.event.event_id), p.digest)
    ]
    return conflicts, len(others) - len(conflicts)
