"""One benchmark run: ceiling, pipeline at full speed, pipeline at half of that rate, naive design,
and optionally a drained backlog, all on the same machine and services, then exactly-once checks.

Phases run one after another on one fresh database (each phase with its own users, experiments
and event ids; the naive design on a second one) and one fresh Redis key prefix; all are removed
at the end. The ceiling runs first,
on the emptiest tables, which flatters it: `pipeline / ceiling` errs low.
"""

import asyncio
import os
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from metering import keys
from metering.bench import ceiling, environment, naive, pipeline, profile, report, verify, workload
from metering.bench.environment import Services
from metering.bench.pipeline import PipelineSettings, RssSampler
from metering.db import create_engine, make_sessionmaker, session_scope
from metering.settings import get_settings

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    events: int = 200_000
    naive_events: int = 10_000
    backlog: int = 0
    shards: int = 2
    concurrency: int = 2
    batch_size: int = 500
    users: int = 200
    experiments: int = 1_000
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
    tags = ["ceiling", "full", "half", "naive"] + (["backlog"] if options.backlog else [])
    people = {
        tag: workload.population(tag, options.users, options.experiments, options.seed)
        for tag in tags
    }
    sizes = {
        "ceiling": options.events,
        "full": options.events,
        "half": max(1, options.events // 2),
        "naive": options.naive_events,
        "backlog": options.backlog,
    }
    say("generating and pricing the workloads")
    works = {
        tag: workload.workload(people[tag], sizes[tag], options.seed + (tag == "half"))
        for tag in tags
    }
    charges = ceiling.price(works["ceiling"], markup, fee)
    expected = {tag: verify.expect(works[tag], markup, fee) for tag in tags if tag != "ceiling"}
    expected["ceiling"] = verify.Expected().add(charges)
    engine = engines[0]
    sessions = {tag: make_sessionmaker(engines[tag == "naive"]) for tag in tags}
    for tag in tags:
        async with session_scope(sessions[tag]) as session:
            await environment.seed(session, people[tag])

    say(f"ceiling: {len(charges):,} rows straight to PostgreSQL")
    ceiling_run = await ceiling.run(services.database_url, charges, options.batch_size)
    figures["ceiling"] = {
        "rows": ceiling_run.rows,
        "seconds": round(ceiling_run.seconds, 3),
        "rows_per_s": round(ceiling_run.rows / ceiling_run.seconds, 1),
    }

    settings_ = PipelineSettings(options.shards, options.concurrency, options.batch_size)
    timeout_s = 120 + options.events / 500
    with environment.children() as started:
        say(f"pipeline: starting beat and a usage worker (-c {options.concurrency})")
        worker = pipeline.start_workers(services, settings_, started)
        sampler = RssSampler(worker)
        sampler.start()
        spy = profile.record(worker, options.profile) if options.profile else None
        say(f"pipeline: {len(works['full'].payloads):,} entries as fast as possible")
        full = await pipeline.run_load(
            services, settings_, works["full"], rate=None, timeout_s=timeout_s
        )
        if spy is not None and options.profile is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            figures["profile"] = profile.summarize(options.profile)
        figures["pipeline"] = report.pipeline_figures(
            full, await _lower_bounds(engine, people["full"], full.publish_ms_by_event)
        )
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
        "pipeline_over_ceiling": round(pipeline_rate / figures["ceiling"]["rows_per_s"], 3),
        "pipeline_over_naive": round(pipeline_rate / figures["naive"]["rows_per_s"], 1),
    }

    if options.backlog:
        figures["backlog"] = await _backlog(services, settings_, works["backlog"], say)

    say("checking that every event was charged exactly once")
    phases = {"ceiling": "ceiling", "full": "pipeline", "half": "pipeline_half_rate"}
    phases |= {"naive": "naive", "backlog": "backlog"}
    figures["exactly_once"] = {}
    for tag in tags:
        async with session_scope(sessions[tag]) as session:
            check = await verify.check(session, people[tag], expected[tag])
            figures["exactly_once"][phases[tag]] = asdict(check) | {"ok": check.ok}
    figures["exactly_once"]["dead_letters"] = await _dead_letters(services)


async def _backlog(
    services: Services, settings_: PipelineSettings, work: workload.Workload, say: Progress
) -> dict[str, Any]:
    """Publish the whole backlog first, then start the workers and time the drain."""
    redis = Redis.from_url(services.redis_url)
    try:
        await pipeline.prepare_streams(redis, services.redis_prefix, settings_.shards)
        say(f"backlog: publishing {len(work.payloads):,} entries with no worker running")
        published = pipeline.Published()
        await pipeline.produce(
            redis, services.redis_prefix, settings_.shards, work, published, None
        )
        with environment.children() as started:
            say("backlog: starting the workers and draining")
            began = time.time()
            worker = pipeline.start_workers(services, settings_, started)
            sampler = RssSampler(worker)
            sampler.start()
            while True:
                if await pipeline.all_acknowledged(redis, published):
                    break
                await asyncio.sleep(1.0)
            seconds = time.time() - began
            sampler.stop()
    finally:
        await redis.aclose()
    return {
        "events": work.unique_events,
        "entries": len(work.payloads),
        "seconds": round(seconds, 1),
        "events_per_s": round(work.unique_events / seconds, 1),
        "memory": report.memory(sampler.samples),
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
        return int(await redis.xlen(keys.dead_letter_stream(services.redis_prefix)))
    finally:
        await redis.aclose()


async def _server_version(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return str(await connection.scalar(text("SHOW server_version")))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
