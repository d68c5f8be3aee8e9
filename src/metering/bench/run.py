"""One benchmark run: ceiling, the ledger's own path, pipeline at full speed, pipeline at half of
that rate, naive design, and optionally a drained backlog, all on the same machine and services,
then exactly-once checks.

Phases run one after another on one fresh database (each phase with its own users, experiments
and event ids; the naive design on a second one) and one fresh Redis key prefix; all are removed
at the end. The ceiling runs first, on the emptiest tables, which flatters it: `pipeline /
ceiling` errs low. The pipeline runs as deployed by default: one stream, the worker concurrency
of `metering stack` and docs/operations.md, the configured batch size.
"""

import asyncio
import math
import os
import platform
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.bench import (
    ceiling,
    cpu,
    environment,
    ledger_path,
    naive,
    pipeline,
    profile,
    report,
    storage,
    verify,
    workload,
)
from metering.bench.environment import Services
from metering.bench.pipeline import AckObserver, PipelineSettings, RssSampler
from metering.dev.processes import Child
from metering.ledger import charging
from metering.ops import redis_keys
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.settings import get_settings

Progress = Callable[[str], None]
CONCURRENCY = 2
"""The usage worker's processes, as `metering stack` starts it and docs/operations.md advises."""


@dataclass(frozen=True)
class Options:
    events: int = 200_000
    naive_events: int = 10_000
    backlog: int = 0
    shards: int | None = None
    """METERING_USAGE_SHARDS for the workers; None: the configured value (one stream)."""
    concurrency: int = CONCURRENCY
    batch_size: int | None = None
    """METERING_USAGE_BATCH_SIZE for the workers and the ceiling; None: the configured one."""
    users: int = 200
    experiments: int = 1_000
    active_experiments: int = workload.ACTIVE_EXPERIMENTS
    """Experiments calling at a time; 0: every call's experiment drawn independently."""
    seed: int = 7
    keep: bool = False
    profile: Path | None = None
    """Where to write py-spy's samples of the usage worker during the full-speed phase."""

    @classmethod
    def quick(cls) -> "Options":
        """Small enough for CI: a few seconds per phase."""
        return cls(events=5_000, naive_events=500, users=20, experiments=100)


async def run(options: Options, say: Progress) -> dict[str, Any]:
    """Run every phase; returns the figures (see `report`)."""
    settings = get_settings()
    run_id = environment.new_run_id()
    services = Services(
        run_id=run_id,
        database_url=environment.database_url_for(
            settings.database_url, f"metering_bench_{run_id}"
        ),
        redis_url=settings.redis_url,
        redis_prefix=f"metering-bench-{run_id}",
    )
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": _load(),
            "python": platform.python_version(),
        },
        "options": asdict(options) | {"profile": str(options.profile or "")},
        "database": services.database_url.rsplit("/", 1)[-1],
        "redis_prefix": services.redis_prefix,
    }
    say(f"database {figures['database']}, Redis prefix {services.redis_prefix}")
    naive_services = replace(services, database_url=f"{services.database_url}_naive")
    await environment.create_database(services.database_url)
    await environment.create_database(naive_services.database_url)
    engine = create_engine(services.database_url, pool_size=1)
    naive_engine = create_engine(naive_services.database_url, pool_size=1)
    try:
        figures["machine"]["postgresql"] = await _server_version(engine)
        await _phases(options, services, naive_services, (engine, naive_engine), figures, say)
    finally:
        await engine.dispose()
        await naive_engine.dispose()
        if not options.keep:
            await environment.drop_database(services.database_url)
            await environment.drop_database(naive_services.database_url)
            environment.delete_keys(services.redis_url, services.redis_prefix)
    figures["machine"]["load_after"] = _load()
    figures["targets"] = report.verdicts(figures)
    return figures


async def _phases(
    options: Options,
    services: Services,
    naive_services: Services,
    engines: tuple[AsyncEngine, AsyncEngine],
    figures: dict[str, Any],
    say: Progress,
) -> None:
    """The phases in order. The naive design has a database of its own: its completion is polled
    with a count of its rows, which must stay cheap."""
    settings = get_settings()
    markup, fee = settings.metering_markup, settings.metering_platform_fee_usd_per_million
    settings_ = _pipeline_settings(options)
    figures["streams"], figures["batch_size"] = settings_.shards, settings_.batch_size
    tags = ["ceiling", "ledger_path", "full", "half", "naive"]
    tags += ["backlog"] if options.backlog else []
    people = {
        tag: workload.population(tag, options.users, options.experiments, options.seed)
        for tag in tags
    }
    sizes = {"half": max(1, options.events // 2), "naive": options.naive_events}
    sizes["backlog"] = options.backlog
    say("generating and pricing the workloads")
    works = {
        tag: workload.workload(
            people[tag],
            sizes.get(tag, options.events),
            options.seed + (tag == "half"),
            active=options.active_experiments,
        )
        for tag in tags
    }
    calls = ceiling.distinct(ceiling.price(works["ceiling"], markup, fee))
    charges = ceiling.price(works["ledger_path"], markup, fee)
    expected = {"ceiling": verify.Expected().add(calls)}
    expected["ledger_path"] = verify.Expected().add(charges)
    expected |= {tag: verify.expect(works[tag], markup, fee) for tag in tags if tag not in expected}
    engine = engines[0]
    sessions = {tag: make_sessionmaker(engines[tag == "naive"]) for tag in tags}
    for tag in tags:
        async with session_scope(sessions[tag]) as session:
            await environment.seed(session, people[tag])

    figures["exactly_once"] = {}
    figures["ceiling"], ceiling_check = await _ceiling(
        services.database_url, people["ceiling"], calls, settings_.batch_size, expected, say
    )
    figures["exactly_once"]["ceiling"] = asdict(ceiling_check) | {"ok": ceiling_check.ok}
    say(f"ledger path (not the ceiling): {len(charges):,} charges through charge_usage")
    groups = _cpu_groups([])
    cpu_before = cpu.read(groups, time.monotonic())
    ledger_run = await ledger_path.run(services.database_url, charges, settings_.batch_size)
    cpu_after = cpu.read(groups, time.monotonic())
    figures["ledger_path"] = {
        "note": "charging.charge_usage on one connection, for information: not the ceiling",
        "rows": ledger_run.rows,
        "seconds": round(ledger_run.seconds, 3),
        "rows_per_s": round(ledger_run.rows / ledger_run.seconds, 1),
        "cpu": cpu.figures(cpu_before, cpu_after, ledger_run.rows),
    }

    timeout_s = 120 + options.events / 500
    with environment.children() as started:
        say(f"pipeline: starting beat and a usage worker (-c {options.concurrency})")
        worker = pipeline.start_workers(services, settings_, started)
        sampler = RssSampler(worker)
        sampler.start()
        spy = profile.record(worker, options.profile) if options.profile else None
        say(f"pipeline: {len(works['full'].payloads):,} entries as fast as possible")
        before = await storage.snapshot(engine)
        groups = _cpu_groups(started.children)
        cpu_before = cpu.read(groups, time.monotonic())
        full = await pipeline.run_load(
            services, settings_, works["full"], rate=None, timeout_s=timeout_s
        )
        cpu_after = cpu.read(groups, time.monotonic())
        after = await storage.snapshot(engine)
        if spy is not None and options.profile is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            figures["profile"] = profile.summarize(options.profile)
        figures["pipeline"] = report.pipeline_figures(
            full, await _lower_bounds(engine, people["full"], full.publish_ms_by_event)
        )
        figures["pipeline"]["cpu"] = cpu.figures(cpu_before, cpu_after, full.unique_events)
        recorded = await storage.counts(engine, [e[0] for e in people["full"].experiments])
        figures["storage"] = storage.per_call(before, after, *recorded)
        half_rate = figures["pipeline"]["entries_per_s"] / 2
        say(f"pipeline: {len(works['half'].payloads):,} entries at {half_rate:,.0f}/s (half)")
        half = await pipeline.run_load(
            services, settings_, works["half"], rate=half_rate, timeout_s=timeout_s
        )
        figures["pipeline_half_rate"] = report.pipeline_figures(
            half, await _lower_bounds(engine, people["half"], half.publish_ms_by_event)
        )
        sampler.stop()
        figures["worker_memory"] = report.memory(sampler.samples)

    say(f"naive: {len(works['naive'].payloads):,} tasks, one transaction each")
    naive_run = await naive.run(
        naive_services,
        works["naive"],
        options.concurrency,
        timeout_s=120 + options.naive_events / 50,
    )
    figures["naive"] = {
        "rows": naive_run.rows,
        "seconds": round(naive_run.seconds, 3),
        "rows_per_s": round(naive_run.rows / naive_run.seconds, 1),
    }
    pipeline_rate = figures["pipeline"]["events_per_s"]
    figures["ratios"] = {
        name: round(pipeline_rate / figures[phase]["rows_per_s"], 3)
        for name, phase in (
            ("pipeline_over_ceiling", "ceiling"),
            ("pipeline_over_ledger_path", "ledger_path"),
            ("pipeline_over_naive", "naive"),
        )
    }

    if options.backlog:
        figures["backlog"] = await _backlog(services, settings_, works["backlog"], say)

    say("checking that every event was charged exactly once")
    phases = {"ledger_path": "ledger_path", "full": "pipeline", "half": "pipeline_half_rate"}
    phases |= {"naive": "naive", "backlog": "backlog"}
    for tag in tags[1:]:
        async with session_scope(sessions[tag]) as session:
            check = await verify.check(session, people[tag], expected[tag])
            figures["exactly_once"][phases[tag]] = asdict(check) | {"ok": check.ok}
    figures["exactly_once"]["dead_letters"] = await _dead_letters(services)


def _cpu_groups(started: Sequence[Child]) -> dict[str, cpu.Meter]:
    """PostgreSQL, Redis, this process (producer, observer, the ceiling's and ledger path's
    writer) and, when started, the workers (beat, usage worker and its pool)."""
    groups: dict[str, cpu.Meter] = {
        "postgres": cpu.postgres,
        "redis": cpu.redis,
        "bench": cpu.this_process,
    }
    if started:
        groups["workers"] = lambda: sum(
            cpu.tree_seconds(process) for child in started for process in child.tree()[:1]
        )
    return groups


def _pipeline_settings(options: Options) -> PipelineSettings:
    """The values in force for the workers; only those given as options are passed to them."""
    settings = get_settings()
    given = {
        "METERING_USAGE_SHARDS": options.shards,
        "METERING_USAGE_BATCH_SIZE": options.batch_size,
    }
    return PipelineSettings(
        shards=options.shards or settings.metering_usage_shards,
        concurrency=options.concurrency,
        batch_size=options.batch_size or settings.metering_usage_batch_size,
        overridden=frozenset(name for name, value in given.items() if value is not None),
    )


async def _ceiling(
    database_url: str,
    people: workload.Population,
    calls: list[charging.UsageCharge],
    batch_size: int,
    expected: dict[str, verify.Expected],
    say: Progress,
) -> tuple[dict[str, Any], verify.Check]:
    """Both ways of the bare insert; the faster is the ceiling. Then the tables are checked and
    dropped and the population's balances put back."""
    runs, tables, used = {}, {}, {}
    groups = _cpu_groups([])
    for method in ceiling.METHODS:
        say(f"ceiling: {len(calls):,} calls into a bare table ({method})")
        before = cpu.read(groups, time.monotonic())
        runs[method] = await ceiling.run(database_url, people, calls, batch_size, method)
        used[method] = cpu.figures(before, cpu.read(groups, time.monotonic()), len(calls))
        tables[method] = await ceiling.inspect(database_url, method)
    await ceiling.restore(database_url, people)
    best = min(runs.values(), key=lambda r: r.seconds)
    figures = {
        "method": best.method,
        "rows": best.rows,
        "seconds": round(best.seconds, 3),
        "rows_per_s": round(best.rows / best.seconds, 1),
        "table_bytes_per_call": round(tables[best.method]["bytes"] / best.rows, 1),
        "cpu": used[best.method],
        "methods": {
            r.method: {"seconds": round(r.seconds, 3), "rows_per_s": round(r.rows / r.seconds, 1)}
            for r in runs.values()
        },
    }
    return figures, verify.check_ceiling(tables, expected["ceiling"], best.credits)


async def _backlog(
    services: Services, settings_: PipelineSettings, work: workload.Workload, say: Progress
) -> dict[str, Any]:
    """Publish the whole backlog first, then start the workers and time the drain, sampling the
    memory of the worker and all its pool children."""
    redis = Redis.from_url(services.redis_url)
    try:
        streams = await pipeline.prepare_streams(redis, services.redis_prefix, settings_.shards)
        say(f"backlog: publishing {len(work.payloads):,} entries with no worker running")
        published = pipeline.Published()
        await pipeline.produce(
            redis, services.redis_prefix, settings_.shards, work, published, None
        )
    finally:
        await redis.aclose()
    observer = AckObserver(services.redis_url, streams, published)
    observer.total = len(work.payloads)
    with environment.children() as started:
        say("backlog: starting the workers and draining")
        began = time.time()
        observer.start()
        worker = pipeline.start_workers(services, settings_, started)
        sampler = RssSampler(worker)
        sampler.start()
        try:
            timeout_s = 600 + len(work.payloads) / 200
            if not await asyncio.to_thread(observer.done.wait, timeout_s):
                raise RuntimeError(
                    f"backlog: only {observer.acked_total()} of {len(work.payloads)} entries "
                    f"were committed within {timeout_s:.0f} s"
                )
        finally:
            observer.stop()
            sampler.stop()
        seconds = time.time() - began
    tenth = observer.when_done(math.ceil(len(work.payloads) / 10))
    return {
        "events": work.unique_events,
        "entries": len(work.payloads),
        "seconds": round(seconds, 1),
        "events_per_s": round(work.unique_events / seconds, 1),
        "memory": report.drain_memory(sampler.samples, tenth),
    }


async def _lower_bounds(
    engine: AsyncEngine, people: workload.Population, publish_ms: dict[str, int]
) -> list[float]:
    """Per event: its call record's `createdAt` (its transaction's start) minus its publish time."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                'SELECT "eventId" AS key, '
                'EXTRACT(EPOCH FROM "createdAt") * 1000 AS created_ms FROM "UsageCall" '
                'WHERE "experimentId" = ANY(:ids)'
            ),
            {"ids": [e[0] for e in people.experiments]},
        )
        return [(float(r.created_ms) - publish_ms[r.key]) / 1000 for r in rows]


async def _dead_letters(services: Services) -> int:
    redis = Redis.from_url(services.redis_url)
    try:
        return int(await redis.xlen(redis_keys.dead_letter_stream(services.redis_prefix)))
    finally:
        await redis.aclose()


async def _server_version(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return str(await connection.scalar(text("SHOW server_version")))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
