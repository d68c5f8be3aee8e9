"""Pipeline commands: emit an event, inspect and replay dead letters, status, and the demo."""

import asyncio
import functools
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.cli.app import app
from metering.cli.common import console, fail, print_json, run
from metering.cli.stack import DATA_DIR, local_stack
from metering.dev.processes import ProcessGroup, celery_command
from metering.ledger import accounts, reports
from metering.ledger.reconcile import find_violations
from metering.ops import migrate, redis_client, redis_keys
from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction, session_scope
from metering.ops.models import MAACExperiment, UsageCall
from metering.ops.redis_client import AsyncRedis, ClusterBrokerError
from metering.ops.settings import get_settings
from metering.pricing.money import USD_PER_CREDIT
from metering.usage import dead_letters
from metering.usage.event import UsageEvent
from metering.usage.producer import AsyncEmitter
from metering.usage.stream_stats import read_backlog

JSON = typer.Option(False, "--json", help="Print JSON instead of text.")
IDS = typer.Option([], "--id", help="Dead letter ids (default: all).")
dlq = typer.Typer(
    help="Dead letters: usage entries that could not be charged.", no_args_is_help=True
)
app.add_typer(dlq, name="dlq")

DEMO_MODELS = [
    ("openai", "gpt-4o-mini", 1200, 300),
    ("openai", "gpt-4.1", 500, 120),
    ("anthropic", "claude-sonnet-4", 400, 100),
    ("anthropic", "claude-haiku-4-5", 900, 250),
    ("google", "gemini-2.5-flash", 1500, 400),
]


async def _redis() -> AsyncRedis:
    """A client on REDIS_URL: a plain Redis or any node of a Redis Cluster."""
    return await redis_client.open_client(get_settings().redis_url)


@app.command()
def emit(
    experiment: str = typer.Option(..., help="Experiment id."),
    provider: str = typer.Option(..., help="Provider, e.g. openai."),
    model: str = typer.Option(..., help="Model, e.g. gpt-4o-mini."),
    input_tokens: int = typer.Option(..., help="Prompt tokens (excluding cache reads/writes)."),
    output_tokens: int = typer.Option(..., help="Output tokens (reasoning included)."),
    cached_input_tokens: int = typer.Option(0),
    cache_write_tokens: int = typer.Option(0),
    reasoning_tokens: int = typer.Option(0),
    tier: str | None = typer.Option(None, help="Service tier: standard, batch, flex, priority."),
    event_id: str | None = typer.Option(None, help="Event id (default: a new UUID)."),
    occurred_at: str | None = typer.Option(None, help="RFC 3339 time (default: now)."),
) -> None:
    """Publish one usage event to its experiment's usage stream."""
    document: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "experiment_id": experiment,
        "provider": provider,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_input_tokens": cached_input_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "occurred_at": occurred_at or datetime.now(UTC).isoformat(),
    }
    if tier is not None:
        document["tier"] = tier
    try:
        event = UsageEvent.model_validate_json(json.dumps(document))
    except ValueError as error:
        fail(f"invalid event: {error}")

    async def main() -> str:
        settings = get_settings()
        client = await _redis()
        try:
            emitter = AsyncEmitter(
                client, prefix=settings.metering_redis_prefix, shards=settings.metering_usage_shards
            )
            return await emitter.emit(event)
        finally:
            await client.aclose()

    entry_id = run(main)
    console.print(f"emitted event {event.event_id} as entry {entry_id}")


@dlq.command("list")
def dlq_list(
    count: int = typer.Option(100, help="At most this many, oldest first."), as_json: bool = JSON
) -> None:
    """List dead letters with their reasons."""

    async def main() -> list[dead_letters.DeadLetterRecord]:
        client = await _redis()
        try:
            return await dead_letters.list_dead_letters(
                client, get_settings().metering_redis_prefix, count
            )
        finally:
            await client.aclose()

    records = run(main)
    if as_json:
        print_json([asdict(r) for r in records])
        return
    table = Table("id", "reason", "event", "detail", "dead at")
    for record in records:
        table.add_row(
            record.dead_id,
            record.reason,
            escape(record.event_id or "-"),
            escape(record.detail),
            record.dead_at,
        )
    console.print(table)
    console.print(f"{len(records)} dead letter(s)")


@dlq.command("replay")
def dlq_replay(
    ids: list[str] = IDS,
) -> None:
    """Send dead letters back to their usage stream (after a fix). Already charged events are
    not charged again."""

    async def main() -> list[tuple[str, str]]:
        settings = get_settings()
        client = await _redis()
        try:
            prefix = settings.metering_redis_prefix
            records = await dead_letters.list_dead_letters(client, prefix, 1_000_000, ids)
            missing = set(ids) - {r.dead_id for r in records}
            if missing:
                fail(f"no dead letter with id {', '.join(sorted(missing))}")
            return await dead_letters.replay_dead_letters(
                client, prefix, settings.metering_usage_shards, records
            )
        finally:
            await client.aclose()

    replayed = run(main)
    for dead_id, entry_id in replayed:
        console.print(f"replayed {dead_id} as entry {entry_id}")
    console.print(f"{len(replayed)} dead letter(s) replayed")


@app.command()
def status(as_json: bool = JSON) -> None:
    """Each usage stream's length, pending entries and lag; dead letters; live workers."""

    async def main() -> dict[str, Any]:
        settings = get_settings()
        client = await _redis()
        try:
            backlog = await read_backlog(
                client, settings.metering_redis_prefix, settings.metering_usage_shards
            )
        finally:
            await client.aclose()
        return {
            "streams": [asdict(stream) for stream in backlog.streams],
            "dead_letters": backlog.dead_letters,
        }

    result = run(main)
    result["workers"] = _workers()
    if as_json:
        print_json(result)
        return
    table = Table("stream", "length", "pending", "lag")
    for row in result["streams"]:
        table.add_row(row["stream"], f"{row['length']:,}", f"{row['pending']:,}", f"{row['lag']:,}")
    console.print(table)
    console.print(f"dead letters: {result['dead_letters']:,}")
    workers = result["workers"]
    console.print(f"workers: {', '.join(workers) if workers else 'none answering'}")


@functools.cache
def _celery() -> Any:
    """The Celery app, once its broker is known to be a plain Redis (a clear error otherwise)."""
    try:
        redis_client.check_broker(get_settings().broker_url)
    except ClusterBrokerError as error:
        fail(error.message)
    # Imported on use: building the Celery app is only worth it for the commands that talk to it.
    from metering.tasks.app import app as celery

    return celery


def _workers() -> list[str]:
    """Names of the Celery workers consuming the usage queue that answer within a second."""
    queues = _celery().control.inspect(timeout=1.0).active_queues() or {}
    return sorted(name for name, qs in queues.items() if any(q["name"] == "usage" for q in qs))


def _kick_drains() -> None:
    """Ask for a drain of every shard now (beat does this every second when it runs)."""
    for shard in range(get_settings().metering_usage_shards):
        _celery().send_task("metering.usage.drain", args=(shard,), expires=5)


@app.command()
def demo(
    seconds: float = typer.Option(4.0, help="How long the simulated runner emits events."),
    rate: int = typer.Option(50, help="Events per second emitted by the runner."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Run the pipeline end to end: a simulated experiment runner emits usage across providers
    and models (with a retried duplicate and a malformed event), a worker charges it, and the
    summary shows what was charged, the balances, the dead letters and the reconcile result.

    Uses DATABASE_URL and REDIS_URL when both are set, embedded services otherwise."""
    with local_stack(data_dir) as services:
        workers = ProcessGroup()
        try:
            if not _workers():
                _start_worker(workers, services.environment())
            summary = run(lambda: _demo(seconds, rate))
        finally:
            workers.stop()
    _print_summary(summary, get_settings().metering_redis_prefix)
    if summary["violations"]:
        raise typer.Exit(1)


def _start_worker(group: ProcessGroup, environment: Mapping[str, str]) -> None:
    console.print("no worker answering: starting one on the usage queue")
    worker = group.start(
        "worker",
        celery_command(
            "worker",
            "-Q",
            "usage",
            "-c",
            "2",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"demo-{os.getpid()}@%h",
            "-l",
            "WARNING",
        ),
        environment,
    )
    deadline = time.monotonic() + 60
    while not _workers():
        if worker.process.poll() is not None or time.monotonic() > deadline:
            fail(
                "the demo worker did not start; run `celery -A metering.tasks.app worker -Q usage`"
            )


async def _demo(seconds: float, rate: int) -> dict[str, Any]:
    settings = get_settings()
    if await migrate.ensure_database(settings.database_url):
        console.print(f"created database {migrate.database_name(settings.database_url)!r}")
    await migrate.upgrade_async(settings.database_url)
    engine = create_engine(settings.database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    client = await _redis()
    prefix = settings.metering_redis_prefix
    try:
        user_id, experiments, before = await run_in_transaction(sessions, _demo_setup)
        emitter = AsyncEmitter(client, prefix=prefix, shards=settings.metering_usage_shards)
        dead_before = await client.xlen(redis_keys.dead_letter_stream(prefix))
        sent = await _simulate_runner(emitter, experiments, seconds, rate)
        await _wait_charged(sessions, client, experiments, sent, dead_before)
        async with session_scope(sessions) as session:
            per_model = await _credits_per_model(session, experiments)
            after = (await reports.user_balance(session, user_id)).credits
            violations = [str(v) for v in await find_violations(session)]
        dead = await dead_letters.list_dead_letters(client, prefix, 1_000_000)
        return {
            "events": sent,
            "per_model": per_model,
            "balance_before": before,
            "balance_after": after,
            "dead_letters": [asdict(letter) for letter in dead[dead_before:]],
            "violations": violations,
            "halted": [e for e in experiments if await emitter.should_stop(e)],
        }
    finally:
        await client.aclose()
        await engine.dispose()


async def _demo_setup(session: AsyncSession) -> tuple[str, list[str], int]:
    """The seed user and three fresh demo experiments owned by it."""
    await accounts.seed(session)
    user = await accounts.find_user(session, accounts.SEED_EMAIL)
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    experiments = [f"demo-{run_id}-{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    for experiment_id in experiments:
        await session.execute(
            insert(MAACExperiment).values(
                id=experiment_id,
                name=f"metering demo {run_id}",
                status="running",
                user_id=user.id,
                api_key_mode="system",
                updated_at=func.now(),
            )
        )
    return user.id, experiments, user.credits


async def _simulate_runner(
    emitter: AsyncEmitter, experiments: list[str], seconds: float, rate: int
) -> dict[str, int]:
    """Emit `rate` events a second for `seconds`, then a retried duplicate and a malformed one."""
    total = max(1, int(seconds * rate))
    counts = {"valid": 0, "duplicate": 0, "malformed": 0}
    first: UsageEvent | None = None
    with Progress(
        TextColumn("runner"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("emitting", total=total)
        for n in range(total):
            provider, model, tokens_in, tokens_out = DEMO_MODELS[n % len(DEMO_MODELS)]
            event = UsageEvent.model_validate(
                {
                    "event_id": str(uuid.uuid4()),
                    "experiment_id": experiments[n % len(experiments)],
                    "provider": provider,
                    "model": model,
                    "input_tokens": tokens_in + 17 * (n % 29),
                    "output_tokens": tokens_out + 5 * (n % 31),
                    "occurred_at": datetime.now(UTC),
                }
            )
            first = first or event
            await emitter.emit(event)
            counts["valid"] += 1
            progress.advance(task)
            await asyncio.sleep(1 / rate)
    assert first is not None
    await emitter.emit(first)
    counts["duplicate"] += 1
    stream = redis_keys.stream_for_experiment(emitter.prefix, emitter.shards, experiments[0])
    malformed = first.model_dump(mode="json") | {"event_id": "demo-malformed", "input_tokens": -40}
    await emitter.redis.xadd(stream, {"event": json.dumps(malformed)})
    counts["malformed"] += 1
    return counts


async def _wait_charged(
    sessions: Any,
    client: AsyncRedis,
    experiments: list[str],
    sent: dict[str, int],
    dead_before: int,
) -> None:
    """Show a progress bar until every valid event is charged and the malformed one is dead."""
    prefix = get_settings().metering_redis_prefix
    with Progress(
        TextColumn("worker"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("charging", total=sent["valid"])
        deadline = time.monotonic() + 120
        while True:
            _kick_drains()
            async with session_scope(sessions) as session:
                charged = await session.scalar(
                    select(func.count()).where(UsageCall.experiment_id.in_(experiments))
                )
            progress.update(task, completed=charged or 0)
            dead = await client.xlen(redis_keys.dead_letter_stream(prefix)) - dead_before
            if (charged or 0) >= sent["valid"] and dead >= sent["malformed"]:
                return
            if time.monotonic() > deadline:
                fail("events were not charged within 2 minutes: is a usage worker running?")
            await asyncio.sleep(0.2)


async def _credits_per_model(session: AsyncSession, experiments: list[str]) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT provider, model, count(*) AS events, sum(credits) AS credits, "
            'sum("exactCredits") AS exact '
            'FROM "UsageCall" WHERE "experimentId" = ANY(:ids) '
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        {"ids": experiments},
    )
    return [
        {
            "provider": row.provider,
            "model": row.model,
            "events": row.events,
            "credits": int(row.credits),
            "exact_credits": str(row.exact),
        }
        for row in rows
    ]


def _print_summary(summary: dict[str, Any], prefix: str) -> None:
    sent = summary["events"]
    console.print(
        f"\n[bold]events[/]: {sent['valid']} valid, {sent['duplicate']} duplicate, "
        f"{sent['malformed']} malformed"
    )
    table = Table("provider", "model", "events", "exact credits", "credits charged")
    for row in summary["per_model"]:
        exact = Decimal(row["exact_credits"]).quantize(Decimal("0.0001"))
        table.add_row(
            row["provider"], row["model"], str(row["events"]), str(exact), f"{row['credits']:,}"
        )
    table.add_row(
        "",
        "total",
        str(sum(r["events"] for r in summary["per_model"])),
        "",
        f"{sum(r['credits'] for r in summary['per_model']):,}",
        end_section=True,
    )
    console.print(table)
    console.print(
        "(each experiment is charged the ceiling of its exact total, so per-model whole credits "
        "need not round each model's exact cost up)"
    )
    before, after = summary["balance_before"], summary["balance_after"]
    console.print(
        f"[bold]balance[/] of {accounts.SEED_EMAIL}: {before:,} -> {after:,} credits "
        f"(charged {before - after:,} credits = ${(before - after) * USD_PER_CREDIT:,.3f})"
    )
    console.print(f"[bold]dead letters[/] (stream {redis_keys.dead_letter_stream(prefix)}):")
    for letter in summary["dead_letters"]:
        console.print(
            f"  {escape(letter['event_id'] or '-')}: {letter['reason']}: {escape(letter['detail'])}"
        )
    if summary["halted"]:
        console.print(f"[yellow]halted[/]: {', '.join(summary['halted'])} (balance ran out)")
    if summary["violations"]:
        console.print("[red]reconcile: violations[/]")
        for violation in summary["violations"]:
            console.print(f"  {escape(violation)}")
    else:
        console.print("[green]reconcile[/]: every balance equals the sum of its transactions")
