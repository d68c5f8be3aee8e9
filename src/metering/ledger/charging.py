"""Charging usage: a batch of priced calls to call records, USAGE rows and balances, exactly once.

`charge_usage` runs in the caller's transaction; the package docstring (`metering.ledger`) states
the invariants and the lock order.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Integer, LargeBinary, Numeric, Text

from metering.grants.draw import UsageDebit, draw_from_grants
from metering.ledger.journal import (
    INT32_MAX,
    BalanceOverflow,
    InvalidAmount,
    KeyConflict,
    KeyKind,
    apply_user_deltas,
    insert_transactions,
    lock_users,
    metadata_json,
    stored_key,
)
from metering.ops.db import RerunTransaction
from metering.ops.ids import cuids
from metering.ops.models import TransactionType
from metering.pricing.calculator import EXACT
from metering.pricing.money import EXACT_CREDIT_PLACES, credits_due

EXACT_QUANTUM = Decimal(1).scaleb(-EXACT_CREDIT_PLACES)


class OwnerChanged(RerunTransaction):
    """An experiment changed owner between reading and locking it; run the batch again."""

    code = "owner_changed"


@dataclass(frozen=True)
class CallFacts:
    """What one LLM call was, as its `UsageCall` record keeps it (with its experiment, owner and
    cost): enough to recompute its exact cost from the catalog version. `payload_digest` is the
    event's SHA-256 in hex; the record keeps its first 16 bytes."""

    provider: str
    model: str
    tier: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    occurred_at: datetime
    catalog_version: str
    payload_digest: str | None = None


@dataclass(frozen=True)
class UsageCharge:
    """One call's usage: `exact_credits` is its exact, fractional cost in credits (>= 0).

    `event_metadata` is the producer's free-form metadata, kept on the call record;
    `api_key_mode` the experiment's, noted on the USAGE row that sums the call."""

    event_id: str
    experiment_id: str
    exact_credits: Decimal
    call: CallFacts
    api_key_mode: str | None = None
    event_metadata: Mapping[str, Any] | None = None


@dataclass
class UsageOutcome:
    """What a usage batch did. Balances are in credits, after the batch."""

    charged: list[str] = field(default_factory=list)
    unbilled: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown_experiments: list[str] = field(default_factory=list)
    amounts: dict[str, int] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    owners: dict[str, str | None] = field(default_factory=dict)


async def charge_usage(
    session: AsyncSession,
    charges: Sequence[UsageCharge],
    owners_read: Mapping[str, str | None] | None = None,
) -> UsageOutcome:
    """Record a batch of usage exactly once, in the caller's transaction.

    Each experiment's `exactCreditsUsed` grows by the exact cost of each new charge; each USAGE row
    is charged the whole credits that growth makes due (`money.credits_due`), so an experiment is
    charged `ceil(exact total)` credits overall. Charges of experiments without a user go to
    `UnbilledUsage`. Every recorded charge also gets its `UsageCall` record, whose key (the event
    id) decides what is new: an event recorded before, billed or unbilled, for a user deleted
    since or not, is a duplicate. Charges of unknown experiments are returned, not recorded.
    Balances may go negative: usage already incurred is always recorded.

    `owners_read` (experiment id -> userId, of every experiment that exists) saves reading them
    again when the caller just did in this transaction; they are checked under lock either way.
    """
    outcome = UsageOutcome()
    if not charges:
        return outcome
    for charge in charges:
        _check_exact_credits(charge)
    experiment_ids = sorted({c.experiment_id for c in charges})
    if owners_read is None:
        found = await experiment_owners(session, experiment_ids)
        owners = {e: owner for e, (owner, _) in found.items()}
    else:
        owners = {e: owners_read[e] for e in experiment_ids if e in owners_read}
    await _hold_owners(session, {u for u in owners.values() if u is not None})
    experiments = await _lock_experiments(session, sorted(owners))
    if experiments.keys() != owners.keys() or any(experiments[e][0] != owners[e] for e in owners):
        raise OwnerChanged("an experiment changed owner or vanished while being charged")
    outcome.owners = dict(owners)
    outcome.unknown_experiments = [c.event_id for c in charges if c.experiment_id not in owners]

    fresh = await _not_yet_recorded(
        session, _first_per_event([c for c in charges if c.experiment_id in owners])
    )
    while True:
        amounts, exact_totals = _carry(fresh, experiments)
        async with session.begin_nested() as savepoint:
            recorded = await _insert_calls(session, _by_event_id(fresh), owners, amounts)
            if len(recorded) == len(fresh):
                break
            # A concurrent batch (of another experiment: these are locked) recorded some of these
            # event ids first: their amounts were part of the carry just computed, so recompute
            # without them.
            await savepoint.rollback()
        fresh = [c for c in fresh if c.event_id in recorded]
    groups = _groups(fresh, amounts)
    billed = [g for g in groups if owners[g.experiment_id] is not None]
    # Each group's key is the usage key of an event that has just got its call record, so no
    # usage row holds it, unless a USAGE posting without an experiment took it.
    inserted = await _insert_usage_rows(session, billed, owners)
    if taken := [g.first_event_id for g in billed if g.stored_key not in inserted]:
        raise KeyConflict(f"the usage key of event {', '.join(taken)} is taken by another posting")
    await _insert_unbilled_rows(session, [g for g in groups if owners[g.experiment_id] is None])

    # Locked last and briefly: the rows above went in without waiting for other batches of the
    # same users.
    balances = await lock_users(session, {u for u in owners.values() if u is not None})
    await draw_from_grants(
        session,
        [UsageDebit(o, g.stored_key, -g.amount) for g in billed if (o := owners[g.experiment_id])],
    )
    user_deltas: dict[str, int] = defaultdict(int)
    experiment_deltas: dict[str, int] = defaultdict(int)
    for group in groups:
        owner = owners[group.experiment_id]
        if owner is not None:
            user_deltas[owner] += group.amount
        experiment_deltas[group.experiment_id] -= group.amount
    await apply_user_deltas(session, balances, user_deltas)
    await _apply_experiment_deltas(session, experiments, experiment_deltas, exact_totals)

    outcome.charged = [c.event_id for c in fresh if owners[c.experiment_id] is not None]
    outcome.unbilled = [c.event_id for c in fresh if owners[c.experiment_id] is None]
    recorded = {c.event_id for c in fresh}
    outcome.duplicates = [
        c.event_id for c in charges if c.experiment_id in owners and c.event_id not in recorded
    ]
    outcome.amounts = {c.event_id: amounts[c.event_id] for c in fresh}
    outcome.balances = balances
    return outcome


@dataclass
class UsageGroup:
    """The calls of one experiment, provider, model, tier and catalog version recorded by one
    batch: one USAGE row (or UnbilledUsage row) sums them. `amount` is in credits (<= 0)."""

    experiment_id: str
    provider: str
    model: str
    tier: str
    catalog_version: str
    api_key_mode: str | None
    first_event_id: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    exact_credits: Decimal = Decimal(0)
    amount: int = 0

    @property
    def stored_key(self) -> str:
        """The group's usage key: that of its first event (in id order), whose call record was
        written with it, so no other group can ever hold it."""
        return stored_key(KeyKind.USAGE, self.first_event_id)

    def add(self, charge: UsageCharge, amount: int) -> None:
        call = charge.call
        self.calls += 1
        self.input_tokens += call.input_tokens
        self.output_tokens += call.output_tokens
        self.cached_input_tokens += call.cached_input_tokens
        self.cache_write_tokens += call.cache_write_tokens
        self.reasoning_tokens += call.reasoning_tokens
        self.exact_credits += charge.exact_credits
        self.amount += amount

    def description(self) -> str:
        calls = "1 call" if self.calls == 1 else f"{self.calls:,} calls"
        return (
            f"{self.provider}/{self.model}: {calls}, {self.input_tokens:,} input, "
            f"{self.output_tokens:,} output tokens"
        )

    def metadata(self) -> dict[str, Any]:
        """The platform's camelCase keys (token counts summed), then the number of calls, their
        exact cost and the experiment's apiKeyMode. The other token counts and the catalog
        version are on the call records, which reports read."""
        metadata: dict[str, Any] = {
            "experimentId": self.experiment_id,
            "tier": self.tier,
            "provider": self.provider,
            "model": self.model,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "calls": self.calls,
            "exactCredits": format(self.exact_credits.normalize(EXACT), "f"),
        }
        if self.api_key_mode is not None:
            metadata["apiKeyMode"] = self.api_key_mode
        return metadata


def _groups(charges: Sequence[UsageCharge], amounts: Mapping[str, int]) -> list[UsageGroup]:
    """The charges summed per experiment, provider, model, tier and catalog version, in key
    order (so that batches wait on each other's keys in one order)."""
    groups: dict[tuple[str, str, str, str, str], UsageGroup] = {}
    for charge in sorted(charges, key=lambda c: c.event_id):
        call = charge.call
        key = (charge.experiment_id, call.provider, call.model, call.tier, call.catalog_version)
        group = groups.get(key)
        if group is None:
            group = groups[key] = UsageGroup(*key, charge.api_key_mode, charge.event_id)
        group.add(charge, amounts[charge.event_id])
    return sorted(groups.values(), key=lambda g: g.first_event_id)


def _by_event_id(charges: Sequence[UsageCharge]) -> list[UsageCharge]:
    """Insertion order: by key, so batches sharing event ids wait on each other in one order."""
    return sorted(charges, key=lambda c: c.event_id)


def _first_per_event(charges: Sequence[UsageCharge]) -> list[UsageCharge]:
    seen: set[str] = set()
    unique = []
    for charge in charges:
        if charge.event_id not in seen:
            seen.add(charge.event_id)
            unique.append(charge)
    return unique


def _check_exact_credits(charge: UsageCharge) -> None:
    """Exact costs are finite, >= 0, and exact at 18 places (what `exactCreditsUsed` stores)."""
    exact = charge.exact_credits
    if not exact.is_finite() or exact < 0 or exact != exact.quantize(EXACT_QUANTUM):
        raise InvalidAmount(
            f"usage cost of event {charge.event_id} must be a finite, non-negative number of "
            f"credits with at most {EXACT_CREDIT_PLACES} decimal places, got {exact}"
        )
    if exact > INT32_MAX:
        raise InvalidAmount(f"usage cost of event {charge.event_id} ({exact} credits) is too large")


def _carry(
    charges: Sequence[UsageCharge], experiments: Mapping[str, tuple[str | None, int, Decimal]]
) -> tuple[dict[str, int], dict[str, Decimal]]:
    """Per-event amounts (credits, <= 0) and each experiment's new exact total, in batch order."""
    totals = {experiment_id: state[2] for experiment_id, state in experiments.items()}
    amounts: dict[str, int] = {}
    for charge in charges:
        before = totals[charge.experiment_id]
        amounts[charge.event_id] = -credits_due(before, charge.exact_credits)
        totals[charge.experiment_id] = before + charge.exact_credits
    return amounts, totals


async def _hold_owners(session: AsyncSession, user_ids: set[str]) -> None:
    """Keep the batch's owners from being deleted until it commits (`FOR KEY SHARE`, which blocks
    only a deletion or a change of key, in id order). An owner already gone was deleted since
    the owners were read: `OwnerChanged`, the batch is worth running again."""
    if not user_ids:
        return
    found = set(
        await session.scalars(
            text('SELECT id FROM "User" WHERE id = ANY(:ids) ORDER BY id FOR KEY SHARE').bindparams(
                bindparam("ids", type_=ARRAY(Text))
            ),
            {"ids": sorted(user_ids)},
        )
    )
    if missing := sorted(user_ids - found):
        raise OwnerChanged(f"experiment owner {', '.join(missing)} was deleted meanwhile")


async def experiment_owners(
    session: AsyncSession, experiment_ids: list[str]
) -> dict[str, tuple[str | None, str]]:
    """Owner (userId) and apiKeyMode of each experiment that exists; not locked."""
    rows = await session.execute(
        text(
            'SELECT id, "userId", "apiKeyMode" FROM "MAACExperiment" WHERE id = ANY(:ids)'
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"ids": experiment_ids},
    )
    return {row.id: (row.userId, row.apiKeyMode) for row in rows}


async def _lock_experiments(
    session: AsyncSession, ids: list[str]
) -> dict[str, tuple[str | None, int, Decimal]]:
    """Lock experiments in id order: owner, creditsUsed and exactCreditsUsed of each."""
    rows = await session.execute(
        text(
            'SELECT id, "userId", "creditsUsed", "exactCreditsUsed" FROM "MAACExperiment" '
            "WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"ids": ids},
    )
    return {row.id: (row.userId, row.creditsUsed, row.exactCreditsUsed) for row in rows}


async def _not_yet_recorded(session: AsyncSession, charges: list[UsageCharge]) -> list[UsageCharge]:
    """Drop events that have a call record: recorded before, billed or unbilled, whatever the
    platform deleted since. Under the experiment locks held here only a batch of another
    experiment with the same event id can race this read; the call records' key settles that."""
    if not charges:
        return []
    seen = set(
        await session.scalars(
            text('SELECT "eventId" FROM "UsageCall" WHERE "eventId" = ANY(:ids)').bindparams(
                bindparam("ids", type_=ARRAY(Text))
            ),
            {"ids": [c.event_id for c in charges]},
        )
    )
    return [c for c in charges if c.event_id not in seen]


async def recorded_digests(
    session: AsyncSession, event_ids: Sequence[str]
) -> dict[str, bytes | None]:
    """The payload digest each of these events was recorded with (`stored_digest`; None if
    unknown), by event id; events never recorded are absent."""
    if not event_ids:
        return {}
    rows = await session.execute(
        text(
            'SELECT "eventId", "payloadDigest" FROM "UsageCall" WHERE "eventId" = ANY(:ids)'
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"ids": list(event_ids)},
    )
    return {row.eventId: row.payloadDigest for row in rows}


_INSERT_CALLS = text(
    'INSERT INTO "UsageCall" ("eventId", "experimentId", "userId", provider, model, tier, '
    '"inputTokens", "outputTokens", "cachedInputTokens", "cacheWriteTokens", '
    '"reasoningTokens", "exactCredits", credits, "occurredAt", "catalogVersion", "payloadDigest", '
    "metadata) "
    "SELECT * FROM unnest(CAST(:event_ids AS text[]), CAST(:experiment_ids AS text[]), "
    "CAST(:user_ids AS text[]), CAST(:providers AS text[]), CAST(:models AS text[]), "
    "CAST(:tiers AS text[]), CAST(:input AS int[]), CAST(:output AS int[]), "
    "CAST(:cached AS int[]), CAST(:cache_write AS int[]), CAST(:reasoning AS int[]), "
    "CAST(:exact AS numeric[]), CAST(:credits AS int[]), CAST(:occurred AS timestamp(3)[]), "
    "CAST(:versions AS text[]), CAST(:digests AS bytea[]), CAST(:metadata AS jsonb[])) "
    'ON CONFLICT ("eventId") DO NOTHING RETURNING "eventId"'
).bindparams(
    *(
        bindparam(name, type_=ARRAY(Text))
        for name in (
            "event_ids",
            "experiment_ids",
            "user_ids",
            "providers",
            "models",
            "tiers",
            "versions",
            "metadata",
        )
    ),
    *(
        bindparam(name, type_=ARRAY(Integer))
        for name in ("input", "output", "cached", "cache_write", "reasoning", "credits")
    ),
    bindparam("exact", type_=ARRAY(Numeric)),
    bindparam("occurred", type_=ARRAY(TIMESTAMP(precision=3))),
    bindparam("digests", type_=ARRAY(LargeBinary)),
)


async def _insert_calls(
    session: AsyncSession,
    charges: Sequence[UsageCharge],
    owners: Mapping[str, str | None],
    amounts: Mapping[str, int],
) -> set[str]:
    """One call record per charge, in one statement, skipping recorded event ids; returns the
    event ids inserted. `credits` is what the call is charged: minus its usage amount."""
    if not charges:
        return set()
    calls = [c.call for c in charges]
    rows = await session.scalars(
        _INSERT_CALLS,
        {
            "event_ids": [c.event_id for c in charges],
            "experiment_ids": [c.experiment_id for c in charges],
            "user_ids": [owners[c.experiment_id] for c in charges],
            "providers": [f.provider for f in calls],
            "models": [f.model for f in calls],
            "tiers": [f.tier for f in calls],
            "input": [f.input_tokens for f in calls],
            "output": [f.output_tokens for f in calls],
            "cached": [f.cached_input_tokens for f in calls],
            "cache_write": [f.cache_write_tokens for f in calls],
            "reasoning": [f.reasoning_tokens for f in calls],
            "exact": [c.exact_credits for c in charges],
            "credits": [-amounts[c.event_id] for c in charges],
            "occurred": [_utc(f.occurred_at) for f in calls],
            "versions": [f.catalog_version for f in calls],
            "digests": [stored_digest(f.payload_digest) for f in calls],
            "metadata": [metadata_json(c.event_metadata) for c in charges],
        },
    )
    return set(rows)


DIGEST_BYTES = 8
"""How much of an event's SHA-256 its call record keeps: enough to tell a redelivery with other
content from a repeat (a false match, which would take a changed redelivery for a repeat, has
odds of 2**-64), in 9 bytes instead of 65. Records written with 16 bytes stay comparable."""


def stored_digest(digest: str | None) -> bytes | None:
    """An event's hex SHA-256 as its call record keeps it."""
    return None if digest is None else bytes.fromhex(digest[: DIGEST_BYTES * 2])


def same_payload(recorded: bytes | None, digest: str | None) -> bool:
    """Whether a call record's digest matches an event's hex SHA-256, on the bytes both have;
    a record or event without a digest matches (nothing to tell them apart)."""
    if recorded is None or digest is None:
        return True
    return recorded == bytes.fromhex(digest[: len(recorded) * 2])


def _utc(moment: datetime) -> datetime:
    """A naive UTC datetime, as TIMESTAMP(3) columns hold them (naive input is taken as UTC)."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


async def _insert_usage_rows(
    session: AsyncSession, groups: Sequence[UsageGroup], owners: Mapping[str, str | None]
) -> set[str]:
    """One USAGE row per group of billed calls; returns the stored keys inserted."""
    none: list[str | None] = [None] * len(groups)
    return await insert_transactions(
        session,
        ids=cuids(len(groups)),
        user_ids=[owners[g.experiment_id] for g in groups],
        types=[TransactionType.USAGE.value] * len(groups),
        amounts=[g.amount for g in groups],
        descriptions=[g.description() for g in groups],
        metadata=[metadata_json(g.metadata()) for g in groups],
        keys=[g.stored_key for g in groups],
        experiment_ids=[g.experiment_id for g in groups],
        payment_ids=none,
        checkout_ids=none,
    )


_INSERT_UNBILLED = text(
    'INSERT INTO "UnbilledUsage" ("eventId", "experimentId", amount, metadata) '
    "SELECT t.event_id, t.experiment_id, t.amount, t.metadata::jsonb "
    "FROM unnest(CAST(:event_ids AS text[]), CAST(:experiment_ids AS text[]), "
    "CAST(:amounts AS int[]), CAST(:metadata AS text[])) "
    "AS t(event_id, experiment_id, amount, metadata)"
).bindparams(
    bindparam("event_ids", type_=ARRAY(Text)),
    bindparam("experiment_ids", type_=ARRAY(Text)),
    bindparam("amounts", type_=ARRAY(Integer)),
    bindparam("metadata", type_=ARRAY(Text)),
)


async def _insert_unbilled_rows(session: AsyncSession, groups: Sequence[UsageGroup]) -> None:
    """One UnbilledUsage row per group of calls of an experiment without a user, keyed by its
    first event id, whose call record was just inserted."""
    if not groups:
        return
    await session.execute(
        _INSERT_UNBILLED,
        {
            "event_ids": [g.first_event_id for g in groups],
            "experiment_ids": [g.experiment_id for g in groups],
            "amounts": [g.amount for g in groups],
            "metadata": [metadata_json(g.metadata()) for g in groups],
        },
    )


async def _apply_experiment_deltas(
    session: AsyncSession,
    experiments: Mapping[str, tuple[str | None, int, Decimal]],
    deltas: Mapping[str, int],
    exact_totals: Mapping[str, Decimal],
) -> None:
    changed = [e for e in deltas if exact_totals[e] != experiments[e][2] or deltas[e]]
    for experiment_id in changed:
        if experiments[experiment_id][1] + deltas[experiment_id] > INT32_MAX:
            raise BalanceOverflow(f"creditsUsed of experiment {experiment_id} would overflow")
    if not changed:
        return
    await session.execute(
        text(
            'UPDATE "MAACExperiment" AS e SET "creditsUsed" = e."creditsUsed" + d.delta, '
            '"exactCreditsUsed" = d.exact, "updatedAt" = now() '
            "FROM unnest(CAST(:ids AS text[]), CAST(:deltas AS bigint[]), "
            "CAST(:exact AS numeric[])) "
            "AS d(id, delta, exact) WHERE e.id = d.id"
        ).bindparams(
            bindparam("ids", type_=ARRAY(Text)),
            bindparam("deltas", type_=ARRAY(BigInteger)),
            bindparam("exact", type_=ARRAY(Numeric)),
        ),
        {
            "ids": changed,
            "deltas": [deltas[e] for e in changed],
            "exact": [exact_totals[e] for e in changed],
        },
    )
