"""The pipeline as deployed: producers XADD, `celery beat` sends drains, `celery worker -Q usage`
drains, prices and commits. Measures throughput and publish-to-commit latency.

Times, all from the one machine clock:
- publish: the millisecond part of the entry id Redis assigned on XADD (exact, server side);
- commit: the moment the entry is seen acknowledged. The drain acknowledges (XACK) right after its
  transaction commits. Several drains may work on one stream at once, so acknowledgements need not
  come in stream order: an observer thread polls each stream's consumer group every `POLL_S` and
  counts as done only the entries both delivered and older than the oldest pending one. An entry
  is thus seen done at most one poll plus one Redis round trip after its commit, or later if an
  older batch is still in flight: an upper bound on the commit time. The call record's `createdAt`
  (the transaction's start) is a lower bound, reported beside it.
"""

import asyncio
import bisect
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from metering.bench import environment
from metering.bench.environment import Services
from metering.bench.workload import Workload
from metering.dev.processes import Child, ProcessGroup, celery_command
from metering.dev.stack import CELERY_APP
from metering.ops import redis_keys
from metering.usage.streams import text

POLL_S = 0.01
CHUNK = 500
"""Entries per pipelined XADD round trip."""
RSS_EVERY_S = 0.5


@dataclass(frozen=True)
class PipelineSettings:
    """What the workers run with; `shards` and `batch_size` are the values in force, passed to
    the workers only when `overridden` (otherwise they read the same settings as this process)."""

    shards: int
    concurrency: int
    batch_size: int
    overridden: frozenset[str] = frozenset()

    def environment(self) -> dict[str, str]:
        values = {
            "METERING_USAGE_SHARDS": str(self.shards),
            "METERING_USAGE_BATCH_SIZE": str(self.batch_size),
        }
        return {name: value for name, value in values.items() if name in self.overridden}


@dataclass
class Published:
    """Entry ids per stream, in publish order, and each entry's (stream, position)."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    placement: list[tuple[str, int]] = field(default_factory=list)

    def publish_ms(self, index: int) -> int:
        stream, position = self.placement[index]
        return int(self.ids[stream][position].split("-", 1)[0])


@dataclass
class RssSample:
    at_s: float
    total_bytes: int
    largest_child_bytes: int
    processes: int


class RssSampler(threading.Thread):
    """Samples the resident memory of a worker's process tree every `RSS_EVERY_S`."""

    def __init__(self, worker: Child) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.samples: list[RssSample] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(RSS_EVERY_S):
            sizes = []
            for process in self.worker.tree():
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    continue  # a pool child may exit between listing and reading
            if sizes:
                children = sizes[1:] or [0]
                self.samples.append(RssSample(time.time(), sum(sizes), max(children), len(sizes)))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class AckObserver(threading.Thread):
    """Polls each stream's consumer group and records when each of our entries was acknowledged.

    An entry is done once it was delivered and is older than every pending entry of its stream:
    those form a prefix of the stream, surely acknowledged (drains may acknowledge out of order,
    so this prefix may lag the true count by the batches in flight). Our entries only:
    `published` is filled by the producer while this runs.
    """

    def __init__(self, redis_url: str, streams: Sequence[str], published: Published) -> None:
        super().__init__(daemon=True)
        self.client = SyncRedis.from_url(redis_url)
        self.streams = list(streams)
        self.published = published
        self.acked: dict[str, list[tuple[float, int]]] = {s: [(0.0, 0)] for s in streams}
        self.total = 0
        self._halt = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._poll()
                time.sleep(POLL_S)
        finally:
            self.client.close()

    def _poll(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, redis_keys.CONSUMER_GROUP)
        replies = pipe.execute(raise_on_error=False)
        now = time.time()
        for n, stream in enumerate(self.streams):
            groups, pending = replies[2 * n], replies[2 * n + 1]
            if (
                isinstance(groups, ResponseError)
                or isinstance(pending, ResponseError)
                or not groups
            ):
                continue
            group = next(g for g in groups if text(g["name"]) == redis_keys.CONSUMER_GROUP)
            ids = self.published.ids.get(stream, [])
            # Read before the pending summary: everything delivered by then and older than the
            # oldest entry pending afterwards is acknowledged.
            last = _id_key(text(group["last-delivered-id"]))
            acked = bisect.bisect_right(ids, last, key=_id_key)
            if pending["pending"]:
                oldest = _id_key(text(pending["min"]))
                acked = min(acked, bisect.bisect_left(ids, oldest, key=_id_key))
            if acked > self.acked[stream][-1][1]:
                self.acked[stream].append((now, acked))
        if self.total and self.acked_total() >= self.total:
            self.done.set()

    def acked_total(self) -> int:
        return sum(history[-1][1] for history in self.acked.values())

    def when_done(self, entries: int) -> float | None:
        """When at least `entries` of our entries (all streams together) were first seen done."""
        events = sorted(
            (at, count - history[n][1])
            for history in self.acked.values()
            for n, (at, count) in enumerate(history[1:])
        )
        done = 0
        for at, more in events:
            done += more
            if done >= entries:
                return at
        return None

    def ack_times(self) -> dict[str, list[float]]:
        """Per stream, when each of our entries (by position) was first seen acknowledged."""
        times: dict[str, list[float]] = {}
        for stream, history in self.acked.items():
            per_entry: list[float] = []
            for at, count in history[1:]:
                per_entry.extend([at] * (count - len(per_entry)))
            times[stream] = per_entry
        return times

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass
class PipelineRun:
    """One producer run's raw measurements."""

    entries: int
    unique_events: int
    first_publish_s: float
    last_commit_s: float
    latencies_s: list[float]
    publish_ms_by_event: dict[str, int]
    producer_s: float
    target_rate: float | None


async def produce(
    redis: Redis,
    prefix: str,
    shards: int,
    work: Workload,
    published: Published,
    rate: float | None,
) -> float:
    """XADD every entry, pipelined `CHUNK` at a time; at most `rate` entries/s when given.

    Returns the seconds the producer took.
    """
    started = time.monotonic()
    streams = [redis_keys.stream_for_experiment(prefix, shards, e) for e in work.experiment_ids]
    chunk = CHUNK if rate is None else max(1, min(CHUNK, int(rate / 200)))
    for begin in range(0, len(work.payloads), chunk):
        end = min(begin + chunk, len(work.payloads))
        if rate is not None:
            due = started + begin / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(begin, end):
                pipe.xadd(streams[n], {"event": work.payloads[n]})
            replies = await pipe.execute()
        for n, entry_id in zip(range(begin, end), replies, strict=True):
            stream = streams[n]
            ids = published.ids.setdefault(stream, [])
            published.placement.append((stream, len(ids)))
            ids.append(text(entry_id))
    return time.monotonic() - started


async def prepare_streams(redis: Redis, prefix: str, shards: int) -> list[str]:
    """Create every shard's stream and consumer group (as the drain would, from the start)."""
    streams = redis_keys.usage_streams(prefix, shards)
    for stream in streams:
        try:
            await redis.xgroup_create(stream, redis_keys.CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
    return streams


async def run_load(
    services: Services,
    settings: PipelineSettings,
    work: Workload,
    *,
    rate: float | None,
    timeout_s: float,
) -> PipelineRun:
    """Publish `work` (at `rate`, or as fast as possible) and wait until all of it is committed."""
    redis = Redis.from_url(services.redis_url)
    try:
        streams = await prepare_streams(redis, services.redis_prefix, settings.shards)
        published = Published()
        observer = AckObserver(services.redis_url, streams, published)
        observer.start()
        try:
            producer_s = await produce(
                redis, services.redis_prefix, settings.shards, work, published, rate
            )
            observer.total = len(work.payloads)
            finished = await asyncio.to_thread(observer.done.wait, timeout_s)
        finally:
            observer.stop()
        if not finished:
            raise RuntimeError(
                f"only {observer.acked_total()} of {len(work.payloads)} entries were committed "
                f"within {timeout_s:.0f} s"
            )
    finally:
        await redis.aclose()
    latencies = []
    last_commit = 0.0
    ack_times = observer.ack_times()
    for index, (stream, position) in enumerate(published.placement):
        committed = ack_times[stream][position]
        last_commit = max(last_commit, committed)
        latencies.append(committed - published.publish_ms(index) / 1000)
    first_ms: dict[str, int] = {}
    for index, event_id in enumerate(work.event_ids):
        first_ms.setdefault(event_id, published.publish_ms(index))
    return PipelineRun(
        entries=len(work.payloads),
        unique_events=work.unique_events,
        first_publish_s=min(first_ms.values()) / 1000,
        last_commit_s=last_commit,
        latencies_s=latencies,
        publish_ms_by_event=first_ms,
        producer_s=producer_s,
        target_rate=rate,
    )


def start_workers(services: Services, settings: PipelineSettings, started: ProcessGroup) -> Child:
    """`celery beat` and `celery worker -Q usage` for this run; returns the worker."""
    env = services.environment(**settings.environment())
    schedule = Path(tempfile.mkdtemp(prefix="metering-bench-")) / "beat-schedule"
    started.start("beat", celery_command("beat", "-s", str(schedule)), env)
    return started.start(
        "worker",
        environment.worker_command(CELERY_APP, "usage", settings.concurrency, "bench"),
        env,
        ready_marker=" ready.",
    )


def _id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-", 1)
    return int(milliseconds), int(sequence)
