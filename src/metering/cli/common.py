"""What every command shares: settings, a database session, and one-line errors.

Cheap to import: SQLAlchemy, Alembic, the settings and rich are loaded when first used (`console`
and `errors` too), so a command that needs none of them starts without them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import typer

from metering.errors import Conflict, MeteringError

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy.ext.asyncio import AsyncSession

    console: Console
    """rich's console on stdout."""
    errors: Console
    """rich's console on stderr."""

T = TypeVar("T")


def __getattr__(name: str) -> Console:
    """`console` and `errors`, made on first use: importing rich costs a command's start."""
    if name not in ("console", "errors"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    made = globals()[name] = Console(stderr=name == "errors")
    return made


def print_error(message: str) -> None:
    from rich.markup import escape

    stderr: Console = globals().get("errors") or __getattr__("errors")
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    print_error(message)
    raise typer.Exit(code)


def operator_error(error: BaseException) -> str | None:
    """The one line an operator needs for an error of the environment, or None for a bug.

    Covers bad settings (a URL of the wrong scheme), PostgreSQL or Redis out of reach, and a
    database without our tables, from whichever command and library raised them. The libraries
    are imported here, after the error: commands that never fail this way never load them.
    """
    from pydantic import ValidationError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from metering.ops.db import sqlstate
    from metering.ops.settings import get_settings

    for cause in _causes(error):
        if isinstance(cause, MeteringError):
            return f"{cause} [{cause.code}]"
        if isinstance(cause, ValidationError):
            return "; ".join(
                f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
                for e in cause.errors()
            )
        if sqlstate(cause) in UNMIGRATED_SQLSTATES:
            return (
                f"the database lacks metering's tables: run `metering db upgrade` ({_line(cause)})"
            )
        if isinstance(cause, RedisConnectionError | RedisTimeoutError) or (
            isinstance(cause, OSError) and _raised_in(error, ("redis", "kombu", "celery"))
        ):
            return (
                f"cannot reach Redis at {_address(get_settings().redis_url, 6379)}: "
                f"{_line(cause)}; check REDIS_URL and that Redis is running"
            )
        if isinstance(cause, OSError) and _raised_in(error, ("asyncpg", "sqlalchemy")):
            return (
                f"cannot reach PostgreSQL at {_address(get_settings().database_url, 5432)}: "
                f"{_line(cause)}; check DATABASE_URL and that PostgreSQL is running"
            )
    return None


UNMIGRATED_SQLSTATES = frozenset({"42P01", "3F000"})
"""Undefined table, undefined schema."""


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _raised_in(error: BaseException, packages: tuple[str, ...]) -> bool:
    """True if a frame of `error`'s traceback (or its causes') is in one of `packages`."""
    for cause in _causes(error):
        traceback = cause.__traceback__
        while traceback is not None:
            module = str(traceback.tb_frame.f_globals.get("__name__", ""))
            if module.split(".", 1)[0] in packages:
                return True
            traceback = traceback.tb_next
    return False


def _address(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body; a `MeteringError` becomes a one-line error and exit status 2
    (1 for a `Conflict` with what is recorded)."""
    import asyncio

    try:
        return asyncio.run(_run(main))
    except MeteringError as error:
        fail(f"{error} [{error.code}]", 1 if isinstance(error, Conflict) else 2)


async def _run(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def in_database(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the configured, migrated database."""
    from metering.ops.db import create_engine, make_sessionmaker, run_in_transaction
    from metering.ops.migrate import check_database
    from metering.ops.settings import get_settings

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
