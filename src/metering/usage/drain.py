"""The drain: one straight line per batch, read -> parse -> price -> record -> acknowledge.

`process_batch` calls each step's module in order: entries read or claimed from a stream
(`streams`) are validated (`parse`), priced (`price`) and recorded exactly once in one database
transaction (`record`: a call record per new event id, USAGE rows summing them); only after the
commit are the batch's users' halt flags and alerts brought up to date (`balances`) and its
entries dead-lettered or acknowledged (`acknowledge`). A crash at any point leaves entries
pending, to be charged (or found already charged) when claimed again.

Every worker process drains as a consumer of its own, so adding processes or machines adds
throughput with no lock between them; beat sends a drain every second and a drain that ran out
of time budget sends itself again, so every free process takes part while a backlog lasts.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.budget.alerts import LowBalanceAlert
from metering.errors import PermanentError
from metering.ops import metrics
from metering.ops import redis_keys as keys
from metering.ops.redis_client import AsyncRedis
from metering.ops.settings import Settings
from metering.pricing import Catalog, get_catalog
from metering.usage import acknowledge, balances, parse, price, record, streams
from metering.usage.parse import CONFLICT_REASON, DeadLetter
from metering.usage.price import Priced
from metering.usage.record import Rates, Recorded
from metering.usage.streams import Entry

IDLE_WAIT_MS = 250
"""A drain that finds its stream empty waits this long for new entries before it ends, so that a
steady flow is charged as it comes, not at the next drain sent by beat (up to 1 s later)."""


@dataclass(frozen=True)
class DrainConfig:
    """What a drain needs from settings, plus the loaded price catalog and its consumer name."""

    prefix: str
    shards: int
    batch_size: int
    claim_idle_ms: int
    max_deliveries: int
    unknown_retry_ms: int
    budget_s: float
    halt_threshold: int
    low_balance_credits: int
    window_days: int
    markup: Decimal
    platform_fee_usd_per_million: Decimal
    catalog: Catalog
    consumer: str = field(default_factory=streams.consumer_name)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DrainConfig":
        return cls(
            prefix=settings.metering_redis_prefix,
            shards=settings.metering_usage_shards,
            batch_size=settings.metering_usage_batch_size,
            claim_idle_ms=settings.metering_usage_claim_idle_ms,
            max_deliveries=settings.metering_usage_max_deliveries,
            unknown_retry_ms=settings.metering_unknown_experiment_retry_s * 1000,
            budget_s=settings.metering_drain_budget_s,
            halt_threshold=settings.metering_halt_threshold,
            low_balance_credits=settings.metering_low_balance_credits,
            window_days=settings.metering_usage_window_days,
            markup=settings.metering_markup,
            platform_fee_usd_per_million=settings.metering_platform_fee_usd_per_million,
            catalog=get_catalog(settings.metering_price_catalog),
        )

    @property
    def rates(self) -> Rates:
        return Rates(self.markup, self.platform_fee_usd_per_million)

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
        }


async def process_batch(
    redis: AsyncRedis,
    sessions: async_sessionmaker[AsyncSession],
    config: DrainConfig,
    entries: Sequence[Entry],
    *,
    now_ms: int | None = None,
) -> BatchReport:
    """Charge one batch exactly once: parse, price, record (one transaction, retried whole on
    deadlocks), then halt flags and alerts, dead letters and acknowledgements, metrics."""
    started = time.monotonic()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    fresh = [e for e in entries if e.deliveries <= config.max_deliveries]
    worn = [
        DeadLetter(e, "delivery_limit", f"delivered {e.deliveries} times without success")
        for e in entries
        if e.deliveries > config.max_deliveries
    ]
    parsed, invalid, repeats = parse.parse_entries(fresh)
    parsed, too_old = parse.within_window(
        parsed, datetime.fromtimestamp(now_ms / 1000, UTC), config.window_days
    )
    priced, unpriced = price.price_events(parsed, config.catalog)
    recorded = await record.record(sessions, config.rates, priced)
    committed_ms = time.time() * 1000
    retrying, expired = _waiting_for_experiment(recorded.unknown, now_ms, config.unknown_retry_ms)
    dead = worn + invalid + too_old + unpriced + recorded.dead + expired

    outcome = recorded.outcome
    report = BatchReport(
        read=len(entries),
        charged=len(outcome.charged),
        unbilled=len(outcome.unbilled),
        duplicates=recorded.duplicates + len(repeats),
        dead=len(dead),
        retrying=len(retrying),
    )
    report.halted = await balances.sync_halts(
        redis, sessions, config.prefix, config.halt_threshold, outcome
    )
    report.low_balance = await balances.alert(
        redis, sessions, config.prefix, config.low_balance_credits, outcome, recorded.uncharged
    )
    await acknowledge.dead_letter_and_acknowledge(
        redis, config.prefix, entries, dead, {e.entry_id for e in retrying}
    )
    _observe(report, priced, recorded, dead, committed_ms, time.monotonic() - started)
    return report


def _waiting_for_experiment(
    unknown: Sequence[Priced], now_ms: int, retry_ms: int
) -> tuple[list[Entry], list[DeadLetter]]:
    """Entries of experiments not in the database: left pending within their retry window,
    dead-lettered past it."""
    retrying: list[Entry] = []
    expired: list[DeadLetter] = []
    for item in unknown:
        entry, event = item.parsed.entry, item.parsed.event
        if now_ms - entry.added_at_ms < retry_ms:
            retrying.append(entry)
            continue
        detail = f"experiment {event.experiment_id} did not appear within {retry_ms // 1000} s"
        expired.append(DeadLetter(entry, "unknown_experiment", detail, event.event_id))
    return retrying, expired


def _observe(
    report: BatchReport,
    priced: Sequence[Priced],
    recorded: Recorded,
    dead: Sequence[DeadLetter],
    committed_ms: float,
    seconds: float,
) -> None:
    """Metrics of a committed, acknowledged batch. An event's age runs from its entry's id
    (the time Redis added it, i.e. its publication) to the commit of its charge."""
    outcome = recorded.outcome
    new = set(outcome.charged) | set(outcome.unbilled)
    charged = set(outcome.charged)
    ages: list[float] = []
    credits: dict[tuple[str, str], int] = {}
    for item in priced:
        event = item.parsed.event
        if event.event_id not in new:
            continue
        new.discard(event.event_id)  # the first entry of an id is the one charged
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
        uncharged=recorded.uncharged,
    )


async def drain_stream(
    redis: AsyncRedis, sessions: async_sessionmaker[AsyncSession], config: DrainConfig, shard: int
) -> BatchReport:
    """Read and charge new entries of one shard's stream until it is empty or the time budget
    is spent (`more` is then True). Other drains may read the same stream meanwhile: each entry
    is delivered to one of them."""
    stream = config.stream(shard)
    await streams.ensure_group(redis, stream)
    report = BatchReport()
    deadline = time.monotonic() + config.budget_s
    while entries := await streams.read_new(
        redis, stream, config.consumer, config.batch_size, IDLE_WAIT_MS
    ):
        report.add(await process_batch(redis, sessions, config, entries))
        if time.monotonic() >= deadline:
            report.more = True
            return report
    await streams.trim_acknowledged(redis, stream)
    return report


async def reclaim_stream(
    redis: AsyncRedis, sessions: async_sessionmaker[AsyncSession], config: DrainConfig, shard: int
) -> BatchReport:
    """Charge entries left pending longer than the claim idle time: those of a crashed drainer
    and those waiting for their experiment. Dead-letters entries past the delivery limit, and
    forgets consumers long idle with nothing pending."""
    stream = config.stream(shard)
    await streams.ensure_group(redis, stream)
    report = BatchReport()
    deadline = time.monotonic() + config.budget_s
    cursor = "0-0"
    while True:
        cursor, entries = await streams.claim_stalled(
            redis, stream, config.consumer, config.claim_idle_ms, config.batch_size, cursor
        )
        if entries:
            report.add(await process_batch(redis, sessions, config, entries))
        if cursor == "0-0":
            break
        if time.monotonic() >= deadline:
            report.more = True
            return report
    await streams.forget_idle_consumers(redis, stream)
    return report
