"""Prometheus metrics of the pipeline, the Stripe queue and alerts.

Workers and the web app are separate processes (Celery prefork children, uvicorn workers), so
metrics use prometheus-client's multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set: every
process on a host writes to that folder and `/metrics` (or `metering metrics serve` on a host
without the web app) adds them up. Stream gauges are read from Redis at scrape time.

Metrics are updated after the work they count is committed, by the drain and the Stripe
processing (`observe_*`); the ledger and pricing never touch them.
"""

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from metering.budget.alerts import BALANCE_FLOOR_CROSSED, LowBalanceAlert, UnchargedUsage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format Prometheus scrapes."""

if multiprocess_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each process writes its values to files there from its first metric on; the folder may
    # be fresh (an emptied tmpfs, a new container), so make sure it exists first.
    os.makedirs(multiprocess_dir, exist_ok=True)

USAGE_EVENTS = Counter(
    "metering_usage_events_total",
    "Usage stream entries by outcome: received, charged, unbilled, duplicate, dead_lettered, "
    "retrying (awaiting their experiment).",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "metering_dead_letters_total", "Usage events moved to the dead-letter stream.", ["reason"]
)
PAYLOAD_CONFLICTS = Counter(
    "metering_event_conflicts_total",
    "Events whose id was already charged with a different payload (the first stands).",
)
BATCH_SIZE = Histogram(
    "metering_batch_size",
    "Entries per drained batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
BATCH_SECONDS = Histogram(
    "metering_batch_seconds",
    "Time to process one batch read from a stream: validate, price, commit, acknowledge.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_AGE_SECONDS = Histogram(
    "metering_event_age_seconds",
    "From an event's publication to the commit of its charge.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CREDITS_CHARGED = Counter(
    "metering_credits_charged_total",
    "Whole credits charged for usage, by provider and model.",
    ["provider", "model"],
)
STRIPE_EVENTS = Counter(
    "metering_stripe_events_total",
    "Stripe events handled, by type and outcome.",
    ["type", "outcome"],
)
HALT_FLAGS = Counter(
    "metering_halt_flags_raised_total", "Experiments told to stop because of the balance."
)
LOW_BALANCE_ALERTS = Counter(
    "metering_low_balance_alerts_total", "Users that crossed the low-balance threshold."
)
BALANCE_FLOOR_ALERTS = Counter(
    "metering_balance_floor_alerts_total",
    "Users whose balance crossed the hard floor (alerts.BALANCE_FLOOR); their experiments halt.",
)
UNCHARGED_EVENTS = Counter(
    "metering_uncharged_events_total",
    "Priced usage events the ledger refused to charge (dead-lettered), by reason, e.g. "
    "balance_overflow.",
    ["reason"],
)
UNCHARGED_CREDITS = Counter(
    "metering_uncharged_credits_total",
    "Whole credits those events would have cost (each rounded up alone), by reason.",
    ["reason"],
)
TASKS = Counter(
    "metering_tasks_total",
    "Celery task runs by task name and outcome: succeeded, retried (an attempt failed and is "
    "sent again) or failed (for good).",
    ["task", "outcome"],
)


def observe_batch(
    *,
    seconds: float,
    outcomes: Mapping[str, int],
    dead_reasons: Iterable[str],
    conflicts: int,
    ages_s: Iterable[float],
    credits: Mapping[tuple[str, str], int],
    halted: int,
    alerts: Sequence[LowBalanceAlert],
    uncharged: Sequence[UnchargedUsage],
) -> None:
    """Count one committed batch: entries by outcome (`received` is the batch size), dead
    letters by reason, event ages at commit, credits by (provider, model), new halts, new
    low-balance and floor alerts, and the events and credits left uncharged by reason."""
    BATCH_SIZE.observe(outcomes.get("received", 0))
    BATCH_SECONDS.observe(seconds)
    for outcome, count in outcomes.items():
        if count:
            USAGE_EVENTS.labels(outcome).inc(count)
    for reason in dead_reasons:
        DEAD_LETTERS.labels(reason).inc()
    if conflicts:
        PAYLOAD_CONFLICTS.inc(conflicts)
    for age in ages_s:
        EVENT_AGE_SECONDS.observe(age)
    for (provider, model), amount in credits.items():
        if amount:
            CREDITS_CHARGED.labels(provider, model).inc(amount)
    if halted:
        HALT_FLAGS.inc(halted)
    for alert in alerts:
        counter = (
            BALANCE_FLOOR_ALERTS if alert.type == BALANCE_FLOOR_CROSSED else LOW_BALANCE_ALERTS
        )
        counter.inc()
    for item in uncharged:
        UNCHARGED_EVENTS.labels(item.reason).inc()
        if item.credits:
            UNCHARGED_CREDITS.labels(item.reason).inc(item.credits)


def observe_stripe_event(event_type: str, outcome: str) -> None:
    STRIPE_EVENTS.labels(event_type, outcome).inc()


def observe_task(task: str, outcome: str) -> None:
    TASKS.labels(task, outcome).inc()


@dataclass(frozen=True)
class StreamStats:
    """One usage stream as Redis reports it for the consumer group."""

    stream: str
    length: int
    pending: int
    lag: int
    oldest_pending_age_s: float = 0.0
    """Since the oldest pending entry was added to the stream; 0 when none is pending."""


class StreamCollector(Collector):
    """Gauges of the usage streams, read just before a scrape."""

    def __init__(self, streams: Sequence[StreamStats], dead_letters: int) -> None:
        self.streams = streams
        self.dead_letters = dead_letters

    def collect(self) -> Iterable[Metric]:
        length = GaugeMetricFamily(
            "metering_stream_length", "Entries in a usage stream.", labels=["stream"]
        )
        pending = GaugeMetricFamily(
            "metering_stream_pending",
            "Entries delivered to a consumer and not yet acknowledged.",
            labels=["stream"],
        )
        lag = GaugeMetricFamily(
            "metering_stream_lag", "Entries not yet delivered to any consumer.", labels=["stream"]
        )
        oldest = GaugeMetricFamily(
            "metering_stream_oldest_pending_age_seconds",
            "Since the oldest entry delivered and not yet acknowledged was published.",
            labels=["stream"],
        )
        for stats in self.streams:
            length.add_metric([stats.stream], stats.length)
            pending.add_metric([stats.stream], stats.pending)
            lag.add_metric([stats.stream], stats.lag)
            oldest.add_metric([stats.stream], stats.oldest_pending_age_s)
        yield from (length, pending, lag, oldest)
        yield GaugeMetricFamily(
            "metering_dead_letter_length", "Entries in the dead-letter stream.", self.dead_letters
        )


@dataclass(frozen=True)
class LedgerStatus:
    """The ledger's health as the web app reads it at scrape time: the last `metering reconcile`
    (None if none has recorded a result) and the stored Stripe events not yet processed."""

    reconcile_violations: int | None
    reconciled_at_s: float | None
    """Unix time of the last reconcile."""
    stripe_unprocessed: Mapping[str, int]
    """Stored, unprocessed Stripe events by stored outcome (`pending`: never handled)."""
    stripe_oldest_s: Mapping[str, float]
    """Age in seconds of the oldest of them, by the same outcome."""


STRIPE_UNPROCESSED_OUTCOMES = ("pending", "retrying", "awaiting_purchase", "failed")
"""Every outcome an unprocessed Stripe event can have: each is exported, at 0 when none has it."""


class LedgerCollector(Collector):
    """Gauges of reconcile's last result and of the Stripe events waiting, read before a scrape."""

    def __init__(self, status: LedgerStatus) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        status = self.status
        violations = GaugeMetricFamily(
            "metering_reconcile_violations",
            "Broken invariants the last `metering reconcile` found (absent before the first).",
        )
        reconciled = GaugeMetricFamily(
            "metering_reconcile_last_run_timestamp_seconds",
            "When the last `metering reconcile` ran (Unix time).",
        )
        if status.reconcile_violations is not None and status.reconciled_at_s is not None:
            violations.add_metric([], status.reconcile_violations)
            reconciled.add_metric([], status.reconciled_at_s)
        unprocessed = GaugeMetricFamily(
            "metering_stripe_events_unprocessed",
            "Stored Stripe events not yet processed, by outcome so far (pending: never handled).",
            labels=["outcome"],
        )
        oldest = GaugeMetricFamily(
            "metering_stripe_events_oldest_unprocessed_seconds",
            "Since the oldest unprocessed Stripe event of an outcome was received.",
            labels=["outcome"],
        )
        for outcome in sorted({*STRIPE_UNPROCESSED_OUTCOMES, *status.stripe_unprocessed}):
            unprocessed.add_metric([outcome], status.stripe_unprocessed.get(outcome, 0))
            oldest.add_metric([outcome], status.stripe_oldest_s.get(outcome, 0.0))
        yield from (violations, reconciled, unprocessed, oldest)


def render(*extra: Collector | None) -> bytes:
    """The Prometheus text exposition of this host's metrics, plus the `extra` collectors given."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)
    for collector in extra:
        if collector is not None:
            registry.register(collector)
    return generate_latest(registry)
