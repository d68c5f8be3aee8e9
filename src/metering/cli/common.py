"""What every command shares: settings, a database session, and one-line errors."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import create_engine, make_sessionmaker, run_in_transaction
from metering.errors import Conflict, MeteringError
from metering.migrate import check_database
from metering.settings import get_settings

T = TypeVar("T")

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body; a `MeteringError` becomes a one-line error and exit status 2
    (1 for a `Conflict` with what is recorded)."""
    try:
        return asyncio.run(_run(main))
    except MeteringError as error:
        fail(f"{error} [{error.code}]", 1 if isinstance(error, Conflict) else 2)


async def _run(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def in_database(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured, migrated database."""

    async def main() -> T:
        engine = create_engine(get_settings().database_url, pool_size=1)
        try:
            await check_database(engine)
            return await run_in_transaction(make_sessionmaker(engine), work)
        finally:
            await engine.dispose()

    return run(main)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))
