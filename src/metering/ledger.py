"""The ledger: the only code that moves credits.

Invariants kept here, inside the caller's database transaction:
- every change to `User.credits` is a `CreditTransaction` row written in the same transaction, so
  `User.credits = SUM(amount)` always;
- every change to `MAACExperiment.creditsUsed` is a USAGE row (or an `UnbilledUsage` row for an
  experiment without a user), so `creditsUsed = -SUM(usage amounts)` always;
- each posting carries a unique idempotency key in the key space of its kind (`key_kind`: usage,
  purchase, clawback, operator; stored as `<kind>:<key>`), so keys of different kinds never
  collide. Posting a key again with the same type, user, amount and experiment changes nothing
  and returns the first result; with any of them different it is refused (`KeyConflict`), never
  answered with the other posting. Duplicates are found by the database (`ON CONFLICT DO
  NOTHING`);
- each charged call has a `UsageCall` record, keyed by its event id and written in the same
  transaction as its USAGE or UnbilledUsage row. It has no foreign key, so it outlives the
  platform's deletes of users and experiments: an event id once recorded is never counted again;
- rows are locked in one order, so concurrent transactions cannot deadlock on each other's
  locks: a usage batch holds its users against deletion (`FOR KEY SHARE`), then locks its
  experiments, writes its rows (call records first), and locks its users' balances (`FOR NO KEY
  UPDATE`) last, each step in id order. Batches of different experiments that share users thus
  write their rows side by side and queue only for the final balance updates; other postings
  lock users `FOR NO KEY UPDATE` too, which never blocks a key share. A user's deletion locks
  the user and then, by ON DELETE SET NULL, its experiments: it waits for the batches holding
  the user, never the reverse. Call records take no lock beyond their own key.

Rows are never updated or deleted: a correction is a new row (ADJUSTMENT or REFUND).
"""

import enum
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Integer, LargeBinary, Numeric, Text

from metering.errors import Conflict, PermanentError, TransientError
from metering.grants.draw import UsageDebit, draw_from_grants
from metering.ids import cuids
from metering.models import TransactionType
from metering.pricing.calculator import EXACT
from metering.pricing.money import EXACT_CREDIT_PLACES, credits_due

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
EXACT_QUANTUM = Decimal(1).scaleb(-EXACT_CREDIT_PLACES)
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once; json.dumps builds one per call
_STRICT_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""What the standard library refuses, orjson must not accept either: datetimes, dataclasses."""


class LedgerError(PermanentError):
    code = "ledger_error"


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class UnknownUser(LedgerError):
    code = "unknown_user"


class BalanceOverflow(LedgerError):
    code = "balance_overflow"


class InvalidMetadata(LedgerError):
    code = "invalid_metadata"


class KeyConflict(LedgerError, Conflict):
    """A key posted again with another type, user, amount or experiment than its first posting."""

    code = "idempotency_key_conflict"


class OwnerChanged(TransientError):
    """An experiment changed owner between reading and locking it; run the batch again."""

    code = "owner_changed"


class KeyKind(enum.StrEnum):
    """The key space of a posting. Migration 0003 applies the same rule to rows written before."""

    USAGE = "usage"
    PURCHASE = "purchase"
    CLAWBACK = "clawback"
    OPERATOR = "operator"
    GRANT = "grant"
    EXPIRY = "expiry"


def key_kind(type_: TransactionType, stripe_payment_id: str | None) -> KeyKind:
    """USAGE: usage; PURCHASE: purchase; ADJUSTMENT or REFUND of a Stripe payment: clawback;
    any other ADJUSTMENT or REFUND: operator."""
    if type_ is TransactionType.USAGE:
        return KeyKind.USAGE
    if type_ is TransactionType.PURCHASE:
        return KeyKind.PURCHASE
    return KeyKind.OPERATOR if stripe_payment_id is None else KeyKind.CLAWBACK


def stored_key(kind: KeyKind, key: str) -> str:
    """The `idempotencyKey` column's value: the caller's key in its kind's key space."""
    return f"{kind.value}:{key}"


@dataclass(frozen=True)
class Posting:
    """A credit movement to record. `amount` is in credits; its sign is fixed by `type`."""

    user_id: str
    type: TransactionType
    amount: int
    description: str
    idempotency_key: str
    metadata: Mapping[str, Any] | None = None
    experiment_id: str | None = None
    stripe_payment_id: str | None = None
    stripe_checkout_id: str | None = None
    kind: KeyKind | None = None
    """A key space of its own (a grant, its expiry); None: the one `key_kind` derives."""

    @property
    def stored_key(self) -> str:
        kind = self.kind or key_kind(self.type, self.stripe_payment_id)
        return stored_key(kind, self.idempotency_key)

    def describe(self) -> str:
        return _describe(self.type, self.amount, self.user_id, self.experiment_id)


@dataclass(frozen=True)
class PostedTransaction:
    """The row a posting's key maps to. `created` is False when the key had been posted before.

    `idempotency_key` is the caller's key, as posted (the column holds it in its kind's space)."""

    transaction_id: str
    idempotency_key: str
    user_id: str
    type: TransactionType
    amount: int
    created: bool


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


def check_amount(type_: TransactionType, amount: int) -> None:
    """Raise `InvalidAmount` unless `amount` is an int32 with the sign its type requires."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"amount must be a whole number of credits, not {amount!r}")
    if not INT32_MIN <= amount <= INT32_MAX:
        raise InvalidAmount(f"amount {amount} does not fit a 32-bit INTEGER column")
    allowed = {
        TransactionType.PURCHASE: (amount > 0, "greater than 0"),
        TransactionType.REFUND: (amount > 0, "greater than 0"),
        TransactionType.USAGE: (amount <= 0, "0 or less"),
        TransactionType.ADJUSTMENT: (amount != 0, "not 0"),
    }
    ok, rule = allowed[type_]
    if not ok:
        raise InvalidAmount(f"{type_.value} amounts must be {rule}, got {amount}")


async def post(session: AsyncSession, posting: Posting) -> PostedTransaction:
    """Record one posting and move the user's balance, or return the first posting of its key."""
    (result,) = await post_many(session, [posting])
    return result


async def post_many(session: AsyncSession, postings: Sequence[Posting]) -> list[PostedTransaction]:
    """Record postings (to one or many users) in the caller's transaction, in one statement.

    Returns one result per posting, in order. A key seen before (in the database or earlier in the
    same call) yields the first row for that key and moves nothing, if it is the same posting
    (type, user, amount, experiment); if not, `KeyConflict` is raised, for the caller to roll
    its transaction back (a posting refused moves nothing).
    """
    for posting in postings:
        check_amount(posting.type, posting.amount)
        if posting.type is TransactionType.USAGE and posting.experiment_id is not None:
            raise LedgerError(
                "usage of an experiment is recorded with charge_usage, which keeps creditsUsed",
                code="usage_needs_charge_usage",
            )
    balances = await _lock_users(session, {p.user_id for p in postings})
    first_by_key: dict[str, Posting] = {}
    for posting in postings:
        first = first_by_key.setdefault(posting.stored_key, posting)
        _refuse_another_posting(first.stored_key, first.describe(), None, posting)
    # Rows go in key order, so that two calls sharing keys wait on each other in the same order.
    candidates = sorted(first_by_key.items())
    ids = cuids(len(candidates))
    inserted_keys = await _insert_transactions(
        session,
        ids=ids,
        user_ids=[p.user_id for _, p in candidates],
        types=[p.type.value for _, p in candidates],
        amounts=[p.amount for _, p in candidates],
        descriptions=[p.description for _, p in candidates],
        metadata=[_json(p.metadata) for _, p in candidates],
        keys=[key for key, _ in candidates],
        experiment_ids=[p.experiment_id for _, p in candidates],
        payment_ids=[p.stripe_payment_id for _, p in candidates],
        checkout_ids=[p.stripe_checkout_id for _, p in candidates],
    )
    deltas: dict[str, int] = defaultdict(int)
    results: dict[str, PostedTransaction] = {}
    for (key, posting), row_id in zip(candidates, ids, strict=True):
        if key in inserted_keys:
            deltas[posting.user_id] += posting.amount
            results[key] = PostedTransaction(
                row_id, posting.idempotency_key, posting.user_id, posting.type, posting.amount, True
            )
    # Before any refusal, so that the rows inserted and the balances agree whatever the caller
    # then does with its transaction.
    await _apply_user_deltas(session, balances, deltas)
    missing = [key for key in first_by_key if key not in results]
    for key, row in (await _existing_transactions(session, missing)).items():
        posting = first_by_key[key]
        _refuse_another_posting(key, row.describe(), row.id, posting)
        results[key] = PostedTransaction(
            row.id, posting.idempotency_key, row.user_id, row.type, row.amount, False
        )
    return [results[p.stored_key] for p in postings]


def _describe(type_: TransactionType, amount: int, user_id: str, experiment_id: str | None) -> str:
    """What a posting is, as far as its key is concerned: equal text, the same posting."""
    for_experiment = f" for experiment {experiment_id}" if experiment_id else ""
    return f"{type_.value} of {amount:+,} credits to user {user_id}{for_experiment}"


def _refuse_another_posting(
    key: str, first: str, transaction_id: str | None, posting: Posting
) -> None:
    """`KeyConflict` unless `posting` is the posting `first` describes (a retry of it)."""
    if posting.describe() == first:
        return
    where = f" (transaction {transaction_id})" if transaction_id else " earlier in this call"
    raise KeyConflict(
        f"idempotency key {key!r} was already posted as {first}{where}; "
        f"refusing {posting.describe()} under the same key"
    )


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
        owners = await _experiment_owners(session, experiment_ids)
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
    balances = await _lock_users(session, {u for u in owners.values() if u is not None})
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
    await _apply_user_deltas(session, balances, user_deltas)
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


async def _lock_users(session: AsyncSession, user_ids: set[str]) -> dict[str, int]:
    """Lock users in id order; return their balances. A missing id raises `UnknownUser`.

    `FOR NO KEY UPDATE`, the lock an UPDATE of the balance takes anyway: it does not block other
    transactions' foreign-key checks, so they can insert rows of these users meanwhile.
    """
    if not user_ids:
        return {}
    rows = await session.execute(
        text(
            'SELECT id, credits FROM "User" WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE'
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"ids": sorted(user_ids)},
    )
    balances = {row.id: row.credits for row in rows}
    missing = sorted(user_ids - balances.keys())
    if missing:
        raise UnknownUser(f"no user with id {', '.join(missing)}")
    return balances


async def _experiment_owners(session: AsyncSession, ids: list[str]) -> dict[str, str | None]:
    rows = await session.execute(
        text('SELECT id, "userId" FROM "MAACExperiment" WHERE id = ANY(:ids)').bindparams(
            bindparam("ids", type_=ARRAY(Text))
        ),
        {"ids": ids},
    )
    return {row.id: row.userId for row in rows}


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
            "metadata": [_json(c.event_metadata) for c in charges],
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


_INSERT_TRANSACTIONS = text(
    'INSERT INTO "CreditTransaction" (id, "userId", type, amount, description, metadata, '
    '"idempotencyKey", "experimentId", "stripePaymentId", "stripeCheckoutId") '
    'SELECT t.id, t.user_id, t.type::"TransactionType", t.amount, t.description, '
    "t.metadata::jsonb, t.key, t.experiment_id, t.payment_id, t.checkout_id "
    "FROM unnest(CAST(:ids AS text[]), CAST(:user_ids AS text[]), CAST(:types AS text[]), "
    "CAST(:amounts AS int[]), CAST(:descriptions AS text[]), CAST(:metadata AS text[]), "
    "CAST(:keys AS text[]), CAST(:experiment_ids AS text[]), CAST(:payment_ids AS text[]), "
    "CAST(:checkout_ids AS text[])) "
    "AS t(id, user_id, type, amount, description, metadata, key, experiment_id, payment_id, "
    "checkout_id) "
    'ON CONFLICT ("idempotencyKey") DO NOTHING RETURNING "idempotencyKey"'
).bindparams(
    *(
        bindparam(name, type_=ARRAY(Text))
        for name in (
            "ids",
            "user_ids",
            "types",
            "descriptions",
            "metadata",
            "keys",
            "experiment_ids",
            "payment_ids",
            "checkout_ids",
        )
    ),
    bindparam("amounts", type_=ARRAY(Integer)),
)


async def _insert_transactions(session: AsyncSession, **columns: list[Any]) -> set[str]:
    """Multi-row insert skipping taken idempotency keys; returns the keys actually inserted."""
    if not columns["ids"]:
        return set()
    return set(await session.scalars(_INSERT_TRANSACTIONS, columns))


async def _insert_usage_rows(
    session: AsyncSession, groups: Sequence[UsageGroup], owners: Mapping[str, str | None]
) -> set[str]:
    """One USAGE row per group of billed calls; returns the stored keys inserted."""
    none: list[str | None] = [None] * len(groups)
    return await _insert_transactions(
        session,
        ids=cuids(len(groups)),
        user_ids=[owners[g.experiment_id] for g in groups],
        types=[TransactionType.USAGE.value] * len(groups),
        amounts=[g.amount for g in groups],
        descriptions=[g.description() for g in groups],
        metadata=[_json(g.metadata()) for g in groups],
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
            "metadata": [_json(g.metadata()) for g in groups],
        },
    )


async def _apply_user_deltas(
    session: AsyncSession, balances: dict[str, int], deltas: Mapping[str, int]
) -> None:
    """Add each user's summed amounts to its balance in one statement; `balances` is updated."""
    changed = {user_id: delta for user_id, delta in deltas.items() if delta}
    for user_id, delta in changed.items():
        after = balances[user_id] + delta
        if not INT32_MIN <= after <= INT32_MAX:
            raise BalanceOverflow(
                f"balance of user {user_id} would be {after}, beyond a 32-bit INTEGER"
            )
        balances[user_id] = after
    if not changed:
        return
    await session.execute(
        text(
            'UPDATE "User" AS u SET credits = u.credits + d.delta, "updatedAt" = now() '
            "FROM unnest(CAST(:ids AS text[]), CAST(:deltas AS bigint[])) AS d(id, delta) "
            "WHERE u.id = d.id"
        ).bindparams(
            bindparam("ids", type_=ARRAY(Text)), bindparam("deltas", type_=ARRAY(BigInteger))
        ),
        {"ids": list(changed), "deltas": list(changed.values())},
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


@dataclass(frozen=True)
class _Row:
    """A posted row, as `_refuse_another_posting` compares it with a posting."""

    id: str
    user_id: str
    type: TransactionType
    amount: int
    experiment_id: str | None

    def describe(self) -> str:
        return _describe(self.type, self.amount, self.user_id, self.experiment_id)


async def _existing_transactions(session: AsyncSession, keys: list[str]) -> dict[str, _Row]:
    """The rows of these stored keys, by stored key."""
    if not keys:
        return {}
    rows = await session.execute(
        text(
            'SELECT id, "idempotencyKey", "userId", type, amount, "experimentId" '
            'FROM "CreditTransaction" WHERE "idempotencyKey" = ANY(:keys)'
        ).bindparams(bindparam("keys", type_=ARRAY(Text))),
        {"keys": keys},
    )
    return {
        row.idempotencyKey: _Row(
            row.id, row.userId, TransactionType(row.type), row.amount, row.experimentId
        )
        for row in rows
    }


def _json(metadata: Mapping[str, Any] | None) -> str | None:
    """Metadata as JSON text for a JSONB column, which cannot hold the NUL character."""
    if metadata is None:
        return None
    try:
        encoded = orjson.dumps(metadata, option=_STRICT_ORJSON).decode()
    except orjson.JSONEncodeError:
        # Beyond orjson: integers past 64 bits, non-string keys, lone surrogates (which JSONB
        # refuses with a clear error). The standard library encodes them or raises as before.
        encoded = _COMPACT.encode(metadata)
    # JSON always escapes NUL as \u0000: without that text there is no NUL, and the walk (the
    # costlier part) is needed only when it appears, perhaps as an escaped backslash and "u0000".
    if "\\u0000" in encoded and _has_nul(metadata):
        raise InvalidMetadata("metadata must not contain the NUL character (\\u0000)")
    return encoded


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False
