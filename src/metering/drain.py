"""The drain: usage stream entries to ledger rows, exactly once, one transaction per batch.

A batch is read with XREADGROUP (or reclaimed with XAUTOCLAIM), validated and priced, and charged
in ONE database transaction (`ledger.charge_usage`, which skips event ids already recorded).
Only after the commit are entries acknowledged (XACK, pipelined), so a crash at any point leaves
them pending and they are charged (or found already charged) when reclaimed. Entries that can
never be charged go to the dead-letter stream first and are acknowledged with the rest. Events of
an experiment not yet in the database stay pending, to be retried by a later reclaim, until
their retry window ends. One drainer per stream at a time, under a leased lock.
"""

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.types import Text

from metering import halt, keys, ledger, metrics
from metering.alerts import (
    BALANCE_FLOOR,
    LowBalanceAlert,
    UnchargedUsage,
    note_balances,
    note_uncharged,
)
from metering.db import run_in_transaction, session_scope
from metering.errors import PermanentError
from metering.events import STREAM_FIELD
from metering.ingest import (
    CONFLICT_REASON,
    DeadLetter,
    Entry,
    Parsed,
    Priced,
    conflict,
    parse_entries,
    price_events,
    split,
    to_charges,
)
from metering.pricing import Catalog, charge_exact_credits, get_catalog
from metering.pricing.money import whole_credits
from metering.redis_client import AsyncRedis
from metering.settings import Settings

log = logging.getLogger(__name__)

CONSUMER = "drain"
"""Every stream has one consumer name: only the holder of the stream's lock reads it."""
OWNER_CHANGE_ATTEMPTS = 3
IDLE_WAIT_MS = 250
"""A drain that finds its stream empty waits this long for new entries before it ends, so that a
steady flow is charged as it comes, not at the next drain sent by beat (up to 1 s later)."""

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


@dataclass(frozen=True)
class DrainConfig:
    """What a drain needs from settings, plus the loaded price catalog."""

    prefix: str
    shards: int
    batch_size: int
    claim_idle_ms: int
    max_deliveries: int
    unknown_retry_ms: int
    lock_ms: int
    budget_s: float
    halt_threshold: int
    low_balance_credits: int
    markup: Decimal
    platform_fee_usd_per_million: Decimal
    catalog: Catalog

    @classmethod
    def from_settings(cls, settings: Settings) -> "DrainConfig":
        return cls(
            prefix=settings.metering_redis_prefix,
            shards=settings.metering_usage_shards,
            batch_size=settings.metering_usage_batch_size,
            claim_idle_ms=settings.metering_usage_claim_idle_ms,
            max_deliveries=settings.metering_usage_max_deliveries,
            unknown_retry_ms=settings.metering_unknown_experiment_retry_s * 1000,
            lock_ms=settings.metering_drain_lock_ms,
            budget_s=settings.metering_drain_budget_s,
            halt_threshold=settings.metering_halt_threshold,
            low_balance_credits=settings.metering_low_balance_credits,
            markup=settings.metering_markup,
            platform_fee_usd_per_million=settings.metering_platform_fee_usd_per_million,
            catalog=get_catalog(settings.metering_price_catalog),
        )

    def stream(self, shard: int) -> str:
        if not 0 <= shard < self.shards:
            raise PermanentError(f"shard {shard} is not in 0..{self.shards - 1}", code="no_shard")
        return keys.usage_streams(self.prefix, self.shards)[shard]


@dataclass
class BatchReport:
    """What draining did: counts of entries, and the experiments newly halted."""

    read: int = 0
    charged: int = 0
    unbilled: int = 0
    duplicates: int = 0
    dead: int = 0
    retrying: int = 0
    halted: list[str] = field(default_factory=list)
    low_balance: list[LowBalanceAlert] = field(default_factory=list)
    more: bool = False
    skipped: bool = False

    def add(self, other: "BatchReport") -> None:
        self.read += other.read
        self.charged += other.charged
        self.unbilled += other.unbilled
        self.duplicates += other.duplicates
        self.dead += other.dead
        self.retrying += other.retrying
        self.halted += other.halted
        self.low_balance += other.low_balance

    def summary(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "charged": self.charged,
            "unbilled": self.unbilled,
            "duplicates": self.duplicates,
            "dead": self.dead,
            "retrying": self.retrying,
            "halted": self.halted,
            "low_balance": [alert.user_id for alert in self.low_balance],
            "more": self.more,
            "skipped": self.skipped,
        }


@dataclass
class _Charged:
    """The committed result of charging a group of priced events."""

    outcome: ledger.UsageOutcome = field(default_factory=ledger.UsageOutcome)
    unknown: list[Priced] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    uncharged: list[UnchargedUsage] = field(default_factory=list)


async def ensure_group(redis: AsyncRedis, stream: str) -> None:
    """Create the consumer group (and the stream) if missing; it starts at the stream's start."""
    try:
        await redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def read_new(
    redis: AsyncRedis, stream: str, count: int, block_ms: int | None = None
) -> list[Entry]:
    """Up to `count` entries never delivered before (XREADGROUP >); when there are none, waits
    up to `block_ms` for some (not at all when None)."""
    reply: Any = await redis.xreadgroup(
        keys.CONSUMER_GROUP, CONSUMER, {stream: ">"}, count=count, block=block_ms
    )
    if not reply:
        return []
    return [Entry(stream, _text(i), _fields(f)) for i, f in reply[0][1] if f is not None]


async def claim_stalled(
    redis: AsyncRedis, stream: str, min_idle_ms: int, count: int, cursor: str = "0-0"
) -> tuple[str, list[Entry]]:
    """Claim entries pending longer than `min_idle_ms` (XAUTOCLAIM), with their delivery counts.

    Returns the cursor to continue from ("0-0" when the whole pending list was scanned).
    """
    reply = await redis.xautoclaim(
        stream, keys.CONSUMER_GROUP, CONSUMER, min_idle_ms, start_id=cursor, count=count
    )
    next_cursor, claimed = _text(reply[0]), [(i, f) for i, f in reply[1] if f is not None]
    if not claimed:
        return next_cursor, []
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id, _ in claimed:
            pipe.xpending_range(stream, keys.CONSUMER_GROUP, entry_id, entry_id, 1)
        pending = await pipe.execute()
    deliveries = {
        _text(rows[0]["message_id"]): int(rows[0]["times_delivered"]) for rows in pending if rows
    }
    entries = [Entry(stream, _text(i), _fields(f), deliveries.get(_text(i), 1)) for i, f in claimed]
    return next_cursor, entries


async def process_batch(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    config: DrainConfig,
    entries: Sequence[Entry],
    *,
    now_ms: int | None = None,
) -> BatchReport:
    """Charge one batch exactly once, then dead-letter, halt and acknowledge.

    Side effects, in order: one database transaction (retried whole on deadlocks); XADD of dead
    letters; halt flags for experiments whose owner's balance is at or below the threshold;
    low-balance alerts published; XACK of every entry except those still waiting for their
    experiment; metrics.
    """
    started = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    report = BatchReport(read=len(entries))
    worn = [e for e in entries if e.deliveries > config.max_deliveries]
    dead = [
        DeadLetter(e, "delivery_limit", f"delivered {e.deliveries} times without success")
        for e in worn
    ]
    parsed, invalid, repeats = parse_entries(
        e for e in entries if e.deliveries <= config.max_deliveries
    )
    priced, unpriced = price_events(parsed, config.catalog)
    charged = await _charge_isolating_failures(sessions, config, priced)
    committed_ms = time.time() * 1000
    dead += invalid + unpriced + charged.dead

    retrying = []
    for item in charged.unknown:
        entry = item.parsed.entry
        if now_ms - entry.added_at_ms < config.unknown_retry_ms:
            retrying.append(entry)
        else:
            dead.append(
                DeadLetter(
                    entry,
                    "unknown_experiment",
                    f"experiment {item.parsed.event.experiment_id} did not appear within "
                    f"{config.unknown_retry_ms // 1000} s",
                    item.parsed.event.event_id,
                )
            )

    outcome = charged.outcome
    report.charged = len(outcome.charged)
    report.unbilled = len(outcome.unbilled)
    report.duplicates = charged.duplicates + len(repeats)
    report.dead = len(dead)
    report.retrying = len(retrying)
    report.halted = await _sync_halts(redis, sessions, config, outcome)
    report.low_balance = await note_balances(
        redis, config.prefix, outcome.balances, config.low_balance_credits
    )
    await note_uncharged(redis, config.prefix, charged.uncharged)

    waiting = {e.entry_id for e in retrying}
    await _dead_letter_and_ack(
        redis, config.prefix, entries[0].stream if entries else "", dead, waiting, entries
    )
    _observe(
        report, priced, outcome, dead, charged.uncharged, committed_ms, time.monotonic() - started
    )
    return report


def _observe(
    report: BatchReport,
    priced: Sequence[Priced],
    outcome: ledger.UsageOutcome,
    dead: Sequence[DeadLetter],
    uncharged: Sequence[UnchargedUsage],
    committed_ms: float,
    seconds: float,
) -> None:
    """Metrics of a committed, acknowledged batch. An event's age runs from its entry's id
    (the time Redis added it, i.e. its publication) to the commit of its charge."""
    recorded = set(outcome.charged) | set(outcome.unbilled)
    charged = set(outcome.charged)
    ages: list[float] = []
    credits: dict[tuple[str, str], int] = {}
    for item in priced:
        event = item.parsed.event
        if event.event_id not in recorded:
            continue
        recorded.discard(event.event_id)  # the first entry of an id is the one charged
        ages.append(max(0.0, committed_ms - item.parsed.entry.added_at_ms) / 1000)
        if event.event_id in charged:
            key = (event.provider, event.model)
            credits[key] = credits.get(key, 0) - outcome.amounts.get(event.event_id, 0)
    metrics.observe_batch(
        seconds=seconds,
        outcomes={
            "received": report.read,
            "charged": report.charged,
            "unbilled": report.unbilled,
            "duplicate": report.duplicates,
            "dead_lettered": report.dead,
            "retrying": report.retrying,
        },
        dead_reasons=[letter.reason for letter in dead],
        conflicts=sum(1 for letter in dead if letter.reason == CONFLICT_REASON),
        ages_s=ages,
        credits=credits,
        halted=len(report.halted),
        alerts=report.low_balance,
        uncharged=uncharged,
    )


async def _charge_isolating_failures(
    sessions: async_sessionmaker[AsyncSession], config: DrainConfig, priced: Sequence[Priced]
) -> _Charged:
    """Charge `priced` in one transaction; if the ledger refuses it, halve until the event it
    refuses is alone, and dead-letter that one. Almost always one transaction."""
    if not priced:
        return _Charged()
    try:
        return await _charge(sessions, config, priced)
    except PermanentError as error:
        if len(priced) == 1:
            return await _refused(sessions, config, priced[0], error)
    first, second = split(priced)
    results = [
        await _charge_isolating_failures(sessions, config, first),
        await _charge_isolating_failures(sessions, config, second),
    ]
    merged = _Charged()
    for result in results:
        merged.outcome.charged += result.outcome.charged
        merged.outcome.unbilled += result.outcome.unbilled
        merged.duplicates += result.duplicates
        merged.outcome.amounts.update(result.outcome.amounts)
        merged.outcome.balances.update(result.outcome.balances)
        merged.outcome.owners.update(result.outcome.owners)
        merged.unknown += result.unknown
        merged.dead += result.dead
        merged.uncharged += result.uncharged
    return merged


async def _refused(
    sessions: async_sessionmaker[AsyncSession],
    config: DrainConfig,
    item: Priced,
    error: PermanentError,
) -> _Charged:
    """The one event the ledger refuses: dead-lettered, with what it would have cost (its
    experiment's owner and apiKeyMode read again, the batch's transaction being rolled back)."""
    event = item.parsed.event
    async with session_scope(sessions) as session:
        found = (await _experiments(session, [event.experiment_id])).get(event.experiment_id)
    owner, credits = None, None
    if found is not None:
        owner, mode = found
        with suppress(PermanentError):  # an apiKeyMode changed since: the cost stays unknown
            exact = charge_exact_credits(
                item.cost, mode, config.markup, config.platform_fee_usd_per_million
            )
            credits = whole_credits(exact)
    uncharged = UnchargedUsage(
        event.event_id, event.experiment_id, owner, error.code, credits, error.message
    )
    letter = DeadLetter(item.parsed.entry, error.code, error.message, event.event_id)
    return _Charged(dead=[letter], uncharged=[uncharged])


async def _charge(
    sessions: async_sessionmaker[AsyncSession], config: DrainConfig, priced: Sequence[Priced]
) -> _Charged:
    async def work(session: AsyncSession) -> _Charged:
        experiments = await _experiments(
            session, sorted({p.parsed.event.experiment_id for p in priced})
        )
        modes = {e: mode for e, (_, mode) in experiments.items()}
        known = [p for p in priced if p.parsed.event.experiment_id in modes]
        charges, dead = to_charges(known, modes, config.markup, config.platform_fee_usd_per_million)
        owners = {e: owner for e, (owner, _) in experiments.items()}
        outcome = await ledger.charge_usage(session, charges, owners)
        late = set(outcome.unknown_experiments)
        unknown = [
            p
            for p in priced
            if p.parsed.event.experiment_id not in modes or p.parsed.event.event_id in late
        ]
        conflicts, duplicates = await _conflicts(session, [p.parsed for p in known], outcome)
        return _Charged(outcome, unknown, dead + conflicts, duplicates)

    for attempt in range(1, OWNER_CHANGE_ATTEMPTS + 1):
        try:
            return await run_in_transaction(sessions, work)
        except ledger.OwnerChanged:
            if attempt == OWNER_CHANGE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _experiments(
    session: AsyncSession, experiment_ids: list[str]
) -> dict[str, tuple[str | None, str]]:
    """Owner (userId) and apiKeyMode of each experiment that exists."""
    rows = await session.execute(
        text(
            'SELECT id, "userId", "apiKeyMode" FROM "MAACExperiment" WHERE id = ANY(:ids)'
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {"ids": experiment_ids},
    )
    return {row.id: (row.userId, row.apiKeyMode) for row in rows}


async def _conflicts(
    session: AsyncSession, parsed: Sequence[Parsed], outcome: ledger.UsageOutcome
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
    recorded = await ledger.recorded_digests(session, sorted({p.event.event_id for p in others}))
    conflicts = [
        conflict(p.entry, p.event.event_id)
        for p in others
        if recorded.get(p.event.event_id) not in (None, p.digest)
    ]
    return conflicts, len(others) - len(conflicts)


async def _sync_halts(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    config: DrainConfig,
    outcome: ledger.UsageOutcome,
) -> list[str]:
    """Bring the halt flags of the batch's users in line with their committed balances
    (`halt.sync_halts`): users at or below the threshold, and users with halted experiments
    (whose balance some other writer may have raised). Returns the experiments newly halted."""
    users = sorted(outcome.balances)
    if not users:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for user_id in users:
            pipe.exists(keys.halted_experiments(config.prefix, user_id))
        flagged = await pipe.execute()
    due = [
        user_id
        for user_id, has_halts in zip(users, flagged, strict=True)
        if has_halts or outcome.balances[user_id] <= max(config.halt_threshold, BALANCE_FLOOR)
    ]
    if not due:
        return []
    charged = {u: {e for e, owner in outcome.owners.items() if owner == u} for u in due}
    change = await halt.sync_halts(
        redis, sessions, config.prefix, due, config.halt_threshold, charged
    )
    return change.raised


async def _dead_letter_and_ack(
    redis: AsyncRedis,
    prefix: str,
    stream: str,
    dead: Sequence[DeadLetter],
    waiting: set[str],
    entries: Sequence[Entry],
) -> None:
    """Dead letters are added before the acknowledgements, in a round trip of their own (on a
    cluster the two streams may live on different nodes, and a pipeline across nodes keeps no
    order): a failure in between can only dead-letter an entry twice, never lose it."""
    to_ack = [e.entry_id for e in entries if e.entry_id not in waiting]
    if dead:
        dead_at = datetime.now(UTC).isoformat()
        position = {e.entry_id: i for i, e in enumerate(entries)}
        async with redis.pipeline(transaction=False) as pipe:
            for letter in sorted(dead, key=lambda d: position[d.entry.entry_id]):
                log.warning(
                    "dead-lettered %s %s: %s: %s",
                    letter.entry.stream,
                    letter.entry.entry_id,
                    letter.reason,
                    letter.detail,
                )
                pipe.xadd(
                    keys.dead_letter_stream(prefix), dict(dead_letter_fields(letter, dead_at))
                )
            await pipe.execute()
    if to_ack:
        await redis.xack(stream, keys.CONSUMER_GROUP, *to_ack)


def dead_letter_fields(letter: DeadLetter, dead_at: str) -> dict[FieldT, EncodableT]:
    """A dead-letter entry: the original payload (byte for byte), why, and where it came from."""
    return {
        "event": _raw(letter.entry.payload()),
        "reason": letter.reason,
        "detail": _raw(letter.detail),
        "event_id": _raw(letter.event_id or ""),
        "stream": letter.entry.stream,
        "entry_id": letter.entry.entry_id,
        "deliveries": str(letter.entry.deliveries),
        "dead_at": dead_at,
    }


def lock_key(stream: str) -> str:
    """The drain lock of a stream; a shard's lock carries the shard's hash tag (its slot)."""
    return f"{stream}:drain-lock"


Renew = Callable[[], Awaitable[bool]]


async def drain_stream(
    redis: AsyncRedis, sessions: async_sessionmaker[AsyncSession], config: DrainConfig, shard: int
) -> BatchReport:
    """Read and charge new entries of one shard's stream until it is empty or the time budget
    is spent (`more` is then True). Does nothing (`skipped`) while another drainer holds it."""
    stream = config.stream(shard)

    async def body(renew: Renew) -> BatchReport:
        report = BatchReport()
        deadline = time.monotonic() + config.budget_s
        while entries := await read_new(redis, stream, config.batch_size, IDLE_WAIT_MS):
            report.add(await process_batch(redis, sessions, config, entries))
            if not await renew():
                return report  # the lease is lost: another drainer may be reading, so no trim
            if time.monotonic() >= deadline:
                report.more = True
                break
        await trim_acknowledged(redis, stream)
        return report

    return await _locked(redis, config, stream, body)


async def reclaim_stream(
    redis: AsyncRedis, sessions: async_sessionmaker[AsyncSession], config: DrainConfig, shard: int
) -> BatchReport:
    """Charge entries left pending longer than the claim idle time: those of a crashed drainer
    and those waiting for their experiment. Dead-letters entries past the delivery limit."""
    stream = config.stream(shard)

    async def body(renew: Renew) -> BatchReport:
        report = BatchReport()
        deadline = time.monotonic() + config.budget_s
        cursor = "0-0"
        while True:
            cursor, entries = await claim_stalled(
                redis, stream, config.claim_idle_ms, config.batch_size, cursor
            )
            if entries:
                report.add(await process_batch(redis, sessions, config, entries))
            if cursor == "0-0" or not await renew():
                break
            if time.monotonic() >= deadline:
                report.more = True
                break
        return report

    return await _locked(redis, config, stream, body)


async def _locked(
    redis: AsyncRedis,
    config: DrainConfig,
    stream: str,
    body: Callable[[Renew], Awaitable[BatchReport]],
) -> BatchReport:
    """Run `body` holding the stream's leased lock; `body` renews the lease between batches."""
    token = uuid.uuid4().hex
    key = lock_key(stream)
    if not await redis.set(key, token, nx=True, px=config.lock_ms):
        return BatchReport(skipped=True)

    async def renew() -> bool:
        return bool(await redis.eval(_RENEW, 1, key, token, str(config.lock_ms)))

    try:
        await ensure_group(redis, stream)
        return await body(renew)
    finally:
        await redis.eval(_RELEASE, 1, key, token)


async def trim_acknowledged(redis: AsyncRedis, stream: str) -> None:
    """Drop entries every consumer of our group has acknowledged (XTRIM MINID, approximate).

    Entries still pending, or not yet delivered, are kept. The group's last delivered id is read
    before its pending entries: an entry delivered in between is then either pending or past that
    id, so a concurrent read can never have its entries trimmed.
    """
    groups = await redis.xinfo_groups(stream)
    summary = await redis.xpending(stream, keys.CONSUMER_GROUP)
    ours = next((g for g in groups if _text(g["name"]) == keys.CONSUMER_GROUP), None)
    if ours is None:
        return
    last = _text(ours["last-delivered-id"])
    if summary["pending"]:
        keep_from = _text(summary["min"])
    else:
        milliseconds, sequence = last.split("-")
        keep_from = f"{milliseconds}-{int(sequence) + 1}"
    if keep_from != "0-1":
        await redis.xtrim(stream, minid=keep_from, approximate=True)


def _text(value: bytes | str) -> str:
    """UTF-8 text; bytes that are not UTF-8 are kept as lone surrogates, so that such an entry is
    dead-lettered (`ingest.parse_entries`) instead of failing its whole batch on every read."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _raw(value: str) -> bytes:
    """The bytes `_text` read; a lone surrogate from a JSON escape is written escaped."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


def _fields(fields: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def payload_experiment_id(payload: str) -> str | None:
    """The experiment id inside a dead letter's payload, for routing a replay to its shard."""
    try:
        document = json.loads(payload)
    except ValueError:
        return None
    value = document.get("experiment_id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class DeadLetterRecord:
    """One entry of the dead-letter stream. `dead_id` is its id there."""

    dead_id: str
    reason: str
    detail: str
    event_id: str
    stream: str
    entry_id: str
    deliveries: int
    dead_at: str
    payload: str


async def list_dead_letters(
    redis: AsyncRedis, prefix: str, count: int = 100, ids: Sequence[str] = ()
) -> list[DeadLetterRecord]:
    """The oldest `count` dead letters, or exactly those with the given ids."""
    stream = keys.dead_letter_stream(prefix)
    if ids:
        async with redis.pipeline(transaction=False) as pipe:
            for dead_id in ids:
                pipe.xrange(stream, dead_id, dead_id, 1)
            rows: list[Any] = [row for found in await pipe.execute() for row in found]
    else:
        rows = list(await redis.xrange(stream, "-", "+", count) or [])
    return [_record(_text(dead_id), _fields(fields)) for dead_id, fields in rows]


async def replay_dead_letters(
    redis: AsyncRedis, prefix: str, shards: int, records: Sequence[DeadLetterRecord]
) -> list[tuple[str, str]]:
    """Add each dead letter's payload back to its experiment's usage stream and remove it from
    the dead-letter stream. Harmless for events already charged (their ids are recorded).
    Returns (dead letter id, new entry id) pairs."""
    if not records:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for record in records:
            experiment_id = payload_experiment_id(record.payload)
            stream = (
                keys.stream_for_experiment(prefix, shards, experiment_id)
                if experiment_id is not None
                else keys.usage_stream(prefix, 0 if shards > 1 else None)
            )
            pipe.xadd(stream, {STREAM_FIELD: _raw(record.payload)})
        added = await pipe.execute()
    # Removed only once every payload is back (the streams may be on other cluster nodes).
    await redis.xdel(keys.dead_letter_stream(prefix), *(r.dead_id for r in records))
    return [(r.dead_id, _text(entry_id)) for r, entry_id in zip(records, added, strict=True)]


def _record(dead_id: str, fields: Mapping[str, str]) -> DeadLetterRecord:
    return DeadLetterRecord(
        dead_id=dead_id,
        reason=fields.get("reason", ""),
        detail=fields.get("detail", ""),
        event_id=fields.get("event_id", ""),
        stream=fields.get("stream", ""),
        entry_id=fields.get("entry_id", ""),
        deliveries=int(fields.get("deliveries", "1")),
        dead_at=fields.get("dead_at", ""),
        payload=fields.get("event", ""),
    )
