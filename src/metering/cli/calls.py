"""Call record commands: `metering calls archive`, retention beyond the exactly-once window."""

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import typer

from metering.cli.app import app
from metering.cli.common import console, fail, print_json, run
from metering.cli.reports import jsonable, parse_time
from metering.ledger.archive import ArchiveResult, archive_calls, check_cutoff
from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.migrate import check_database
from metering.ops.settings import get_settings

calls = typer.Typer(
    help="Call records: archive those older than the exactly-once window.", no_args_is_help=True
)
app.add_typer(calls, name="calls")
BEFORE = typer.Option(..., help="Cutoff: a time (RFC 3339, UTC if no offset) or an age (40d).")
TO = typer.Option(..., help="The gzip JSON-lines file to append to (made if missing).")
CHUNK = typer.Option(5_000, min=1, max=100_000, help="Records per transaction.")
JSON = typer.Option(False, "--json", help="Print JSON instead of text.")


@calls.command("archive")
def archive(before: str = BEFORE, to: Path = TO, chunk: int = CHUNK, as_json: bool = JSON) -> None:
    """Write the call records recorded and occurred before the cutoff to a file, then delete
    them. Refused for a cutoff inside the window (METERING_USAGE_WINDOW_DAYS); safe to run
    again, onto the same file, after an interruption."""
    cutoff = parse_time(before, "--before")
    assert cutoff is not None
    now = datetime.now(UTC)
    settings = get_settings()
    window = settings.metering_usage_window_days
    if not to.parent.is_dir():
        fail(f"--to {to}: no folder {to.parent}")

    async def main() -> ArchiveResult:
        check_cutoff(cutoff, now, window)
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            await check_database(engine)
            sessions = make_sessionmaker(engine)
            return await archive_calls(
                sessions, to, cutoff, now=now, window_days=window, chunk=chunk
            )
        finally:
            await engine.dispose()

    result = run(main)
    if as_json:
        print_json(jsonable(asdict(result)))
        return
    console.print(
        f"archived {result.archived:,} call records to {to} in {result.chunks:,} chunks, "
        f"{result.resumed:,} more already in it; {result.credits:,} credits in all, recorded "
        f"and occurred before {cutoff:%Y-%m-%d %H:%M} UTC"
    )
