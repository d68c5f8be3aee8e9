"""Ledger commands: seed, reconcile, balance, and operators' refunds and adjustments."""

from collections.abc import Awaitable, Callable
from dataclasses import asdict

import typer
from redis.exceptions import RedisError
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from metering.budget import halt
from metering.cli.app import app
from metering.cli.common import console, errors, in_database, print_json, run
from metering.grants.read import Grant, open_grants
from metering.ledger import accounts, journal, reports
from metering.ledger.reconcile import Deletion, Violation, find_deletions, find_violations
from metering.ops import redis_client
from metering.ops.db import create_engine, make_sessionmaker
from metering.ops.reconcile_status import record_reconcile
from metering.ops.settings import get_settings

JSON = typer.Option(False, "--json", help="Print JSON instead of text.")


def _report_posting(posted: journal.PostedTransaction, as_json: bool) -> None:
    if as_json:
        print_json(asdict(posted))
    elif posted.created:
        console.print(
            f"posted {posted.type.value} of {posted.amount:+,} credits "
            f"to user {posted.user_id} (transaction {posted.transaction_id})"
        )
    else:
        console.print(
            f"already posted as transaction {posted.transaction_id} "
            f"({posted.type.value} {posted.amount:+,}): nothing changed"
        )


@app.command()
def seed(as_json: bool = JSON) -> None:
    """Create the seed's test user (test@example.com) with 10,000 credits. Safe to run again."""
    _report_posting(in_database(accounts.seed), as_json)


@app.command()
def reconcile(as_json: bool = JSON) -> None:
    """Check every balance against its transactions; exit 1 if any invariant is broken.

    Usage whose user or experiment the platform deleted is reported apart: not a violation. The
    result is recorded in Redis for /metrics."""

    async def work(session: AsyncSession) -> tuple[list[Violation], list[Deletion]]:
        return await find_violations(session), await find_deletions(session)

    violations, deletions = in_database(work)
    _record_reconcile(len(violations))
    if as_json:
        print_json(
            {
                "ok": not violations,
                "violations": [asdict(v) for v in violations],
                "deletions": [asdict(d) for d in deletions],
            }
        )
    else:
        for deletion in deletions:
            console.print(
                f"[yellow]{deletion.kind.replace('_', ' ')}[/] {escape(str(deletion))}",
                highlight=False,
                soft_wrap=True,
            )
        for violation in violations:
            errors.print(
                f"[red]violation[/] {escape(str(violation))}", highlight=False, soft_wrap=True
            )
        if not violations:
            console.print("reconcile: every balance equals the sum of its transactions")
    if violations:
        raise typer.Exit(1)


def _record_reconcile(violations: int) -> None:
    """Keep the result for /metrics; without Redis the reconcile still reports, with a warning."""
    settings = get_settings()

    async def main() -> None:
        redis = await redis_client.open_client(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            await record_reconcile(redis, settings.metering_redis_prefix, violations)
        finally:
            await redis.aclose()

    try:
        run(main)
    except (RedisError, OSError) as error:
        errors.print(
            f"[yellow]warning:[/] result not recorded for /metrics: {escape(str(error))}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def balance(
    user: str = typer.Argument(..., help="User id or email."), as_json: bool = JSON
) -> None:
    """Show a user's credit balance."""
    # Imported here: metering.cli.grants imports this module.
    from metering.cli.grants import grant_json, print_grants

    async def work(session: AsyncSession) -> tuple[reports.UserBalance, list[Grant]]:
        balance = await reports.user_balance(session, user)
        return balance, await open_grants(session, balance.user_id)

    result, grants = in_database(work)
    if as_json:
        print_json({**asdict(result), "grants": [grant_json(g) for g in grants]})
        return
    table = Table("user", "email", "credits", "USD")
    table.add_row(result.user_id, result.email, f"{result.credits:,}", f"${result.usd:,.3f}")
    console.print(table)
    print_grants(grants)


KEY = typer.Option(
    ...,
    help="Idempotency key, e.g. the ticket: the same key posts once, so running the command "
    "again (a lost reply) changes nothing; a key already used for another posting is refused.",
)
REASON = typer.Option(..., help="Why, for the audit trail.")
OPERATOR = typer.Option(
    ..., envvar="METERING_OPERATOR", help="Who makes the posting, for the audit trail."
)


@app.command()
def refund(
    experiment: str = typer.Argument(..., help="Experiment id."),
    credits: int = typer.Option(..., help="Credits to give back (> 0)."),
    reason: str = REASON,
    key: str = KEY,
    operator: str = OPERATOR,
    as_json: bool = JSON,
) -> None:
    """Give credits back to an experiment's owner (a REFUND transaction), once per key."""

    _post(accounts.refund_experiment, experiment, credits, reason, key, operator, as_json=as_json)


@app.command()
def adjust(
    user: str = typer.Argument(..., help="User id or email."),
    credits: int = typer.Option(..., help="Credits to add (negative to remove)."),
    reason: str = REASON,
    key: str = KEY,
    operator: str = OPERATOR,
    as_json: bool = JSON,
) -> None:
    """Correct a user's balance (an ADJUSTMENT transaction), once per key."""

    _post(accounts.adjust_user, user, credits, reason, key, operator, as_json=as_json)


def _post(
    correction: Callable[
        [AsyncSession, str, int, str, str, str], Awaitable[journal.PostedTransaction]
    ],
    target: str,
    credits: int,
    reason: str,
    key: str,
    operator: str,
    *,
    as_json: bool,
) -> None:
    """Post an operator's correction, report it, and bring the user's halt flags up to date."""

    async def work(session: AsyncSession) -> journal.PostedTransaction:
        return await correction(session, target, credits, reason, key, operator)

    posted = in_database(work)
    _report_posting(posted, as_json)
    _sync_halts(posted.user_id)


def _sync_halts(user_id: str) -> None:
    """After an operator's posting, the user's halt flags follow the balance it left, as after a
    purchase (`halt.sync_halts`). The posting is committed and reported first: a failure here is
    a warning, and running the command again with the same key syncs again."""
    settings = get_settings()

    async def main() -> None:
        engine = create_engine(settings.database_url, pool_size=1)
        redis = await redis_client.open_client(settings.redis_url)
        try:
            await halt.sync_halts(
                redis,
                make_sessionmaker(engine),
                settings.metering_redis_prefix,
                [user_id],
                settings.metering_halt_threshold,
            )
        finally:
            await redis.aclose()
            await engine.dispose()

    try:
        run(main)
    except (RedisError, OSError) as error:
        errors.print(
            f"[yellow]warning:[/] posted, but the halt flags were not synced: {escape(str(error))};"
            " run the same command again (same key) to sync them",
            highlight=False,
            soft_wrap=True,
        )
