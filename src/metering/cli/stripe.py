"""Stripe commands: list stored webhook events, and replay one."""

from dataclasses import asdict

import typer
from rich.markup import escape
from rich.table import Table

from metering.cli.app import app
from metering.cli.common import console, print_json, run
from metering.ops import redis_client
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.migrate import check_database
from metering.ops.settings import get_settings
from metering.stripe import processing
from metering.stripe.follow_up import follow_up
from metering.stripe.processing import EventRow, Processed

stripe_app = typer.Typer(help="Stripe webhook events: inspect and replay.", no_args_is_help=True)
app.add_typer(stripe_app, name="stripe")

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


@stripe_app.command("events")
def events(
    failed: bool = typer.Option(
        False,
        "--failed",
        help="Only events to look at: failed, retrying, quarantined, awaiting their purchase.",
    ),
    limit: int = typer.Option(50, min=1, max=10_000, help="How many, newest first."),
    as_json: bool = JSON,
) -> None:
    """List stored Stripe events: processed or not, outcome, attempts, last error or reason.

    An event awaiting its purchase longer than STRIPE_AWAITING_PURCHASE_BOUND_S is OVERDUE.
    """

    async def main() -> list[EventRow]:
        settings = get_settings()
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            await check_database(engine)
            async with session_scope(make_sessionmaker(engine)) as session:
                return await processing.list_events(
                    session,
                    failed_only=failed,
                    awaiting_bound_s=settings.stripe_awaiting_purchase_bound_s,
                    limit=limit,
                )
        finally:
            await engine.dispose()

    rows = run(main)
    if as_json:
        print_json([asdict(row) for row in rows])
        return
    table = Table("event", "type", "received", "processed", "outcome", "attempts", "reason")
    for row in rows:
        table.add_row(
            row.id,
            row.type,
            f"{row.received_at:%Y-%m-%d %H:%M:%S}",
            f"{row.processed_at:%Y-%m-%d %H:%M:%S}" if row.processed_at else "-",
            (row.outcome or "-") + (" OVERDUE" if row.overdue else ""),
            str(row.attempts),
            escape(_reason(row)),
        )
    console.print(table)


def _reason(row: EventRow) -> str:
    if row.outcome == "awaiting_purchase" and row.processed_at is None:
        return f"waiting for the purchase of payment {row.payment_intent}"
    return row.last_error or ""


@stripe_app.command("replay")
def replay(
    event_id: str = typer.Argument(..., help="The Stripe event id (evt_...)."),
    as_json: bool = JSON,
) -> None:
    """Process a stored event now, here; a processed event is left as it is.

    Events its purchase woke (refunds or disputes that arrived first) are processed too.
    """

    async def main() -> list[Processed]:
        settings = get_settings()
        engine = create_engine(settings.database_url, pool_size=1)
        redis = await redis_client.open_client(settings.redis_url)
        done: list[Processed] = []
        pending = [event_id]
        try:
            await check_database(engine)
            sessions = make_sessionmaker(engine)
            while pending:
                processed = await processing.process_event(
                    sessions, pending.pop(0), lock_timeout_ms=settings.stripe_lock_timeout_ms
                )
                await follow_up(redis, sessions, settings, processed)
                done.append(processed)
                pending.extend(processed.wake_event_ids)
        finally:
            await redis.aclose()
            await engine.dispose()
        return done

    results = run(main)
    if as_json:
        print_json([result.summary() for result in results])
        return
    for result in results:
        state = "already processed" if result.already_processed else "processed"
        console.print(f"{result.event_id} ({result.type}): {state}, outcome {result.outcome.value}")
