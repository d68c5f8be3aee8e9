"""The journal: postings of credits to users, each under an idempotency key of its kind.

The only writer of `CreditTransaction` rows and `User.credits` (usage batches post through
`ledger.charging`, which uses the helpers here). The package docstring (`metering.ledger`) states
the invariants.
"""

import enum
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import BigInteger, Integer, Text

from metering.errors import Conflict, PermanentError
from metering.ops.ids import cuids
from metering.ops.models import TransactionType

INT32_MIN = -(2**31)


INT32_MAX = 2**31 - 1


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
    balances = await lock_users(session, {p.user_id for p in postings})
    first_by_key: dict[str, Posting] = {}
    for posting in postings:
        first = first_by_key.setdefault(posting.stored_key, posting)
        _refuse_another_posting(first.stored_key, first.describe(), None, posting)
    # Rows go in key order, so that two calls sharing keys wait on each other in the same order.
    candidates = sorted(first_by_key.items())
    ids = cuids(len(candidates))
    inserted_keys = await insert_transactions(
        session,
        ids=ids,
        user_ids=[p.user_id for _, p in candidates],
        types=[p.type.value for _, p in candidates],
        amounts=[p.amount for _, p in candidates],
        descriptions=[p.description for _, p in candidates],
        metadata=[metadata_json(p.metadata) for _, p in candidates],
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
    await apply_user_deltas(session, balances, deltas)
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


async def lock_users(session: AsyncSession, user_ids: set[str]) -> dict[str, int]:
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


async def insert_transactions(session: AsyncSession, **columns: list[Any]) -> set[str]:
    """Multi-row insert skipping taken idempotency keys; returns the keys actually inserted."""
    if not columns["ids"]:
        return set()
    return set(await session.scalars(_INSERT_TRANSACTIONS, columns))


async def apply_user_deltas(
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


def metadata_json(metadata: Mapping[str, Any] | None) -> str | None:
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
