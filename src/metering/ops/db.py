"""Engine and the session scope: the one place that commits.

Every engine talks UTC (Prisma stores `DateTime` as UTC in TIMESTAMP(3) columns). A transaction
that loses a deadlock or a serialization race is retried whole by `run_in_transaction`.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from metering.errors import PermanentError, TransientError
from metering.ops.settings import to_asyncpg_url

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})
"""Serialization failure, deadlock, lock or statement timeout, server shutting down: the whole
transaction may simply be run again."""
DATA_EXCEPTION_CLASS = "22"
"""SQLSTATE class of values PostgreSQL can never accept (out of range, bad JSON text, ...)."""


def create_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An asyncpg engine for a `postgresql://` URL (Prisma's spelling is accepted)."""
    return create_async_engine(
        to_asyncpg_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"timezone": "UTC", "application_name": "metering"}},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One database transaction: committed if the block succeeds, rolled back otherwise."""
    async with sessions() as session, session.begin():
        yield session


def sqlstate(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy or asyncpg error, if any."""
    original = getattr(error, "orig", error)
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    cause = getattr(original, "__cause__", None)
    if code is None and cause is not None:
        code = getattr(cause, "sqlstate", None)
    return code if isinstance(code, str) else None


class RerunTransaction(TransientError):
    """Raised by a transaction's work when what it read changed before it could lock it:
    `run_in_transaction` runs the work again, as after a deadlock."""

    code = "rerun_transaction"


def is_retryable(error: BaseException) -> bool:
    """True for deadlocks, serialization failures, lost connections and `RerunTransaction`."""
    if isinstance(error, RerunTransaction | InterfaceError | OperationalError):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or sqlstate(error) in RETRYABLE_SQLSTATES
    return isinstance(error, OSError | ConnectionError)


async def run_in_transaction(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    """Run `work` in one transaction, retrying the whole of it after a deadlock, a lost
    connection or a `RerunTransaction` (one policy: the same attempts and back-off for all).

    `work` must be safe to run again, and idempotent by its keys: a connection lost during COMMIT
    may hide a commit that succeeded, so a retry must find its rows already there. Make keys
    before calling, never inside `work`. Raises `TransientError` once the attempts are used up,
    `PermanentError` for values the database can never accept.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with session_scope(sessions) as session:
                return await work(session)
        except (DBAPIError, OSError, ConnectionError, RerunTransaction) as error:
            if (sqlstate(error) or "").startswith(DATA_EXCEPTION_CLASS):
                raise PermanentError(
                    f"the database refused a value: {first_line(error)}", code="invalid_data"
                ) from error
            if not is_retryable(error):
                raise
            if attempt == attempts:
                raise TransientError(
                    f"database transaction failed {attempts} times: {first_line(error)}"
                ) from error
            await asyncio.sleep(0.05 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )
