"""Report commands: `metering usage` and `metering transactions`, as tables or `--json`."""

import re
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from metering.cli.app import app
from metering.cli.common import console, errors, fail, in_database, print_json
from metering.ledger import reports
from metering.ops.models import TransactionType
from metering.ops.settings import get_settings
from metering.pricing import get_catalog

JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
BY = typer.Option(reports.GroupBy.MODEL, help="How to group the usage.")
TYPES = typer.Option(None, "--type", help="Only rows of this type (repeat for several).")
RELATIVE = re.compile(r"^(\d+)([mhdw])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
TOKEN_COLUMNS = ("input", "output", "cached in", "cache write", "reasoning")


def parse_time(value: str | None, option: str) -> datetime | None:
    """RFC 3339 / ISO 8601 (UTC if no offset), a date, or an age such as `30m`, `12h`, `7d`."""
    if value is None:
        return None
    relative = RELATIVE.match(value.strip())
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) - timedelta(**{UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is neither a time (2025-09-01T12:00Z) nor an age (7d, 12h)")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def jsonable(value: Any) -> Any:
    """Dataclasses, Decimals (as exact strings), times and enums as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def usage_table(title: str, groups: list[reports.UsageGroup], total: reports.UsageGroup) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("group")
    for name in ("calls", *TOKEN_COLUMNS, "cost USD", "exact credits", "credits"):
        table.add_column(name, justify="right")
    for index, group in enumerate([*groups, total]):
        key = "total" if index == len(groups) else group.key
        if group.unbilled_calls:
            key += f" ({group.unbilled_calls:,} unbilled)"
        table.add_row(
            key,
            f"{group.calls:,}",
            f"{group.input_tokens:,}",
            f"{group.output_tokens:,}",
            f"{group.cached_input_tokens:,}",
            f"{group.cache_write_tokens:,}",
            f"{group.reasoning_tokens:,}",
            f"${group.cost_usd:,.6f}",
            f"{group.exact_credits:,.6f}",
            f"{group.credits:,}",
            end_section=index == len(groups) - 1,
            style="bold" if index == len(groups) else None,
        )
    return table


@app.command()
def usage(
    user: str | None = typer.Option(None, "--user", help="User id or email."),
    experiment: str | None = typer.Option(None, "--experiment", help="Experiment id."),
    by: reports.GroupBy = BY,
    since: str | None = typer.Option(
        None, help="Only usage charged since: a time (UTC if no offset) or an age (7d, 12h)."
    ),
    as_json: bool = JSON,
) -> None:
    """Usage of a user or an experiment by provider, model or day: calls, tokens, cost, credits."""
    if (user is None) == (experiment is None):
        fail("give exactly one of --user or --experiment")
    since_at = parse_time(since, "--since")

    async def work(session: AsyncSession) -> reports.UsageReport:
        return await reports.usage_report(
            session,
            user=user,
            experiment_id=experiment,
            by=by,
            since=since_at,
            catalog=get_catalog(get_settings().metering_price_catalog),
        )

    with errors.status("summing usage"):
        report = in_database(work)
    if as_json:
        print_json(jsonable(report))
        return
    window = f" since {report.since:%Y-%m-%d %H:%M} UTC" if report.since else ""
    title = f"usage of {report.scope} {report.scope_id} by {report.by.value}{window}"
    console.print(usage_table(title, report.groups, report.total))


@app.command()
def transactions(
    user: str = typer.Argument(..., help="User id or email."),
    types: list[TransactionType] | None = TYPES,
    since: str | None = typer.Option(None, help="Since a time or an age (7d), inclusive."),
    until: str | None = typer.Option(None, help="Until a time or an age, exclusive."),
    limit: int = typer.Option(20, min=1, max=100_000, help="Most recent rows to show."),
    as_json: bool = JSON,
) -> None:
    """A user's ledger rows, newest first."""
    since_at, until_at = parse_time(since, "--since"), parse_time(until, "--until")

    async def work(session: AsyncSession) -> tuple[str, list[reports.TransactionRow]]:
        rows: list[reports.TransactionRow] = []
        cursor = None
        with Progress(
            TextColumn("reading transactions"),
            BarColumn(),
            MofNCompleteColumn(),
            console=errors,
            transient=True,
        ) as progress:
            task = progress.add_task("reading", total=limit)
            while True:
                page = await reports.user_transactions(
                    session,
                    user,
                    types=types or (),
                    since=since_at,
                    until=until_at,
                    cursor=cursor,
                    limit=min(reports.MAX_PAGE, limit - len(rows)),
                )
                rows += page.items
                progress.update(task, completed=len(rows))
                if page.next_cursor is None or len(rows) >= limit:
                    return page.user_id, rows
                cursor = page.next_cursor

    user_id, rows = in_database(work)
    if as_json:
        print_json({"user_id": user_id, "items": jsonable(rows)})
        return
    table = Table(title=f"transactions of user {user_id}", title_justify="left")
    for name in ("time (UTC)", "type", "credits", "experiment", "description"):
        table.add_column(name, justify="right" if name == "credits" else "left")
    for row in rows:
        table.add_row(
            f"{row.created_at:%Y-%m-%d %H:%M:%S}",
            row.type.value,
            f"[{'green' if row.amount > 0 else 'red'}]{row.amount:+,}[/]",
            row.experiment_id or "",
            row.description,
        )
    console.print(table)
    if not rows:
        console.print("no transactions match")
