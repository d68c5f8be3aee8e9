"""`metering bench`: the benchmark of the pipeline against its ceiling and the naive design.

The benchmark is the `metering.bench` package; it needs the `bench` extra (psutil, py-spy).
"""

from dataclasses import replace
from pathlib import Path

import typer

from metering.cli.app import app
from metering.cli.common import console, errors, fail, print_json, run

PROFILE = typer.Option(
    None,
    help="Sample the usage worker with py-spy during the full-speed phase into this file "
    "(collapsed stacks) and report where its time goes.",
)


@app.command()
def bench(
    events: int = typer.Option(200_000, min=1, help="Usage events published to the pipeline."),
    naive_events: int = typer.Option(10_000, min=1, help="Events sent to the naive design."),
    backlog: int = typer.Option(
        0,
        min=0,
        help="Also drain a backlog of this many events published before the workers "
        "start, sampling worker memory (2,000,000 for the memory check; slow).",
    ),
    shards: int | None = typer.Option(
        None,
        min=1,
        help="METERING_USAGE_SHARDS for the workers (default: as configured, one stream).",
    ),
    concurrency: int | None = typer.Option(
        None, min=1, help="Usage worker processes (celery -c; default 2, as `metering stack`)."
    ),
    batch_size: int | None = typer.Option(
        None,
        min=1,
        help="METERING_USAGE_BATCH_SIZE of the drain and the ceiling's batch "
        "(default: as configured, 500).",
    ),
    active_experiments: int | None = typer.Option(
        None,
        min=0,
        help="Experiments calling at a time, each for a stretch of calls (default 32); "
        "0: every call's experiment and model drawn independently.",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="5,000 events and 500 naive ones (and --backlog as given): about a minute, for CI.",
    ),
    keep: bool = typer.Option(False, help="Keep the run's database and Redis keys afterwards."),
    profile: Path | None = PROFILE,
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Measure the pipeline end to end (real beat and usage workers) against the ceiling (the
    same rows written by one process, no Redis, no Celery) and the naive design (one Celery task
    and one transaction per event), check every event was charged exactly once, and report.

    The ceiling is the bare typed insert: the calls into a plain table made for the run, with
    each batch's balance updates (unnest and COPY, the faster kept). The report adds the
    database's bytes per call and, with --backlog, the workers' memory, each against its target.

    Uses the PostgreSQL server of DATABASE_URL and the Redis of REDIS_URL, in a fresh database and
    key prefix that are removed afterwards. Exits 1 if any event was not charged exactly once."""
    try:
        from metering.bench.report import exactly_once, table, text
        from metering.bench.run import Options
        from metering.bench.run import run as run_bench
    except ModuleNotFoundError as error:
        fail(f"metering bench needs {error.name}: pip install 'metering[bench]'")

    options = Options.quick() if quick else Options(events, naive_events)
    options = replace(
        options, backlog=backlog, shards=shards, batch_size=batch_size, keep=keep, profile=profile
    )
    if concurrency is not None:
        options = replace(options, concurrency=concurrency)
    if active_experiments is not None:
        options = replace(options, active_experiments=active_experiments)
    figures = run(lambda: run_bench(options, lambda line: errors.print(line, highlight=False)))
    if as_json:
        print_json(figures)
    else:
        console.print(text(figures), highlight=False, soft_wrap=True)
        console.print(table(figures))
    if not exactly_once(figures):
        raise typer.Exit(1)
