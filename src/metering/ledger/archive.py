"""Archiving call records older than the exactly-once window: to a file, then deleted.

The file is gzip JSON lines: one object per call record, the table's columns under their names
(all but `payloadDigest`, needed only inside the window), `exactCredits` a decimal string, times
RFC 3339 in UTC. A record is archived when it was both recorded (`createdAt`) and occurred
(`occurredAt`) before the cutoff, and the cutoff is outside the window (`usage.window`).

Each chunk is one transaction: lock its rows, append them to the file as one gzip member, fsync,
delete them (adding their sums per experiment and owner to `ArchivedUsage`, which reconcile
counts with the call records kept), commit. A row is deleted only once it is on disk. A run
stopped between the fsync and the commit leaves rows both in the file and in the table; the
next run onto the same file first deletes the rows already in it (writing nothing again) and
cuts off a member a crash left unfinished (its rows were never deleted). So after a finished
run every archived record is in the file exactly once, however often runs were interrupted.
"""

import fcntl
import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import PermanentError
from metering.ops.db import session_scope
from metering.pricing.calculator import EXACT
from metering.usage.window import outside_window, window_start

COLUMNS = (
    "eventId",
    "experimentId",
    "userId",
    "provider",
    "model",
    "tier",
    "inputTokens",
    "outputTokens",
    "cachedInputTokens",
    "cacheWriteTokens",
    "reasoningTokens",
    "exactCredits",
    "credits",
    "occurredAt",
    "catalogVersion",
    "createdAt",
    "metadata",
)
DEFAULT_CHUNK = 5_000
_READ = 1 << 20
_OLD = '"createdAt" < :cutoff AND "occurredAt" < :cutoff'
_NAMES = ", ".join(f'"{name}"' for name in COLUMNS)
_SELECT = text(
    f'SELECT {_NAMES} FROM "UsageCall" WHERE {_OLD} AND "eventId" > :after '
    'ORDER BY "eventId" LIMIT :limit FOR UPDATE'
)
_DELETE = text(
    f'WITH gone AS (DELETE FROM "UsageCall" WHERE "eventId" = ANY(:ids) AND {_OLD} '
    'RETURNING "experimentId", "userId", credits, "exactCredits", "inputTokens", '
    '"outputTokens"), '
    'kept AS (INSERT INTO "ArchivedUsage" (id, "experimentId", "userId", calls, credits, '
    '"exactCredits", "inputTokens", "outputTokens") '
    "SELECT 'arc_' || md5(random()::text || clock_timestamp()::text), \"experimentId\", "
    '"userId", count(*), SUM(credits), SUM("exactCredits"), SUM("inputTokens"), '
    'SUM("outputTokens") FROM gone GROUP BY "experimentId", "userId") '
    'SELECT count(*), COALESCE(SUM(credits), 0), COALESCE(SUM("exactCredits"), 0) FROM gone'
).bindparams(bindparam("ids", type_=ARRAY(Text)))
"""Deletes the records and, in the same statement, adds their sums per experiment and owner to
`ArchivedUsage`, for reconcile."""


class InsideWindow(PermanentError):
    """The cutoff would archive call records an event's retry may still need."""

    code = "inside_window"


class ArchiveUnreadable(PermanentError):
    """The archive file holds something other than complete gzip JSON lines of call records."""

    code = "archive_unreadable"


@dataclass(frozen=True)
class ArchiveResult:
    """What a run did. `archived`: records written to the file and deleted; `resumed`: records
    an interrupted run had written, deleted now; `credits` and `exact_credits` (credits) are the
    sums of both."""

    path: str
    cutoff: datetime
    archived: int
    resumed: int
    credits: int
    exact_credits: Decimal
    chunks: int


def check_cutoff(cutoff: datetime, now: datetime, window_days: int) -> None:
    """`InsideWindow` unless `cutoff` (aware) is before the window's first instant."""
    if not outside_window(cutoff, now, window_days):
        oldest = window_start(now, window_days)
        raise InsideWindow(
            f"cutoff {cutoff.isoformat()} is inside the {window_days}-day exactly-once window; "
            f"archive only before {oldest.isoformat()}"
        )


def record(row: Sequence[Any]) -> dict[str, Any]:
    """A call record as the archive keeps it (plain JSON values)."""
    out: dict[str, Any] = {}
    for name, value in zip(COLUMNS, row, strict=True):
        if isinstance(value, datetime):
            value = value.replace(tzinfo=UTC).isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        out[name] = value
    return out


def read_members(handle: BinaryIO) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Each complete gzip member's records with the offset where the member ends. A member cut
    short at the end of the file is not yielded; anything else unreadable raises."""
    decompressor = zlib.decompressobj(wbits=31)
    consumed = 0
    parts: list[bytes] = []
    while chunk := handle.read(_READ):
        while chunk:
            try:
                parts.append(decompressor.decompress(chunk))
            except zlib.error as error:
                raise ArchiveUnreadable(f"not gzip after byte {consumed:,}: {error}") from error
            if not decompressor.eof:
                consumed += len(chunk)
                break
            used = len(chunk) - len(decompressor.unused_data)
            consumed += used
            chunk = decompressor.unused_data
            yield _parse(b"".join(parts), consumed), consumed
            parts, decompressor = [], zlib.decompressobj(wbits=31)


def _parse(data: bytes, offset: int) -> list[dict[str, Any]]:
    try:
        records = [json.loads(line) for line in data.splitlines()]
    except ValueError as error:
        raise ArchiveUnreadable(f"the member ending at byte {offset:,}: {error}") from error
    if not all(isinstance(item, dict) and isinstance(item.get("eventId"), str) for item in records):
        raise ArchiveUnreadable(f"the member ending at byte {offset:,} holds no call records")
    return records


def _append(fd: int, rows: Sequence[dict[str, Any]]) -> None:
    """One gzip member of these records at the end of the file, on disk when this returns."""
    lines = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    data = gzip.compress(lines.encode(), mtime=0)
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _open(path: Path) -> int:
    """The archive file open for appending, locked against another run, its directory entry
    on disk."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        os.close(fd)
        raise ArchiveUnreadable(f"{path} is being written by another run") from error
    if created:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return fd


@dataclass
class _Tally:
    """Records deleted so far, with their credits and exact credits."""

    count: int = 0
    credits: int = 0
    exact_credits: Decimal = Decimal(0)

    def add(self, count: int, credits: int, exact_credits: Decimal) -> int:
        self.count += count
        self.credits += credits
        self.exact_credits = EXACT.add(self.exact_credits, exact_credits)
        return count


async def _delete(
    session: AsyncSession, ids: Sequence[str], cutoff: datetime, tally: _Tally
) -> int:
    """Delete these records if still old by `cutoff`, counted in `tally`; how many."""
    result = await session.execute(_DELETE, {"ids": list(ids), "cutoff": cutoff})
    count, credits, exact = result.one()
    return tally.add(int(count), int(credits), Decimal(exact))


async def _resume(
    sessions: async_sessionmaker[AsyncSession], fd: int, cutoff: datetime, tally: _Tally
) -> int:
    """Delete the records already in the file; cut off an unfinished last member. Returns
    how many were deleted."""
    deleted = 0
    end = 0
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        for records, member_end in read_members(handle):
            async with session_scope(sessions) as session:
                ids = [r["eventId"] for r in records]
                deleted += await _delete(session, ids, cutoff, tally)
            end = member_end
    if end != os.fstat(fd).st_size:
        os.ftruncate(fd, end)
        os.fsync(fd)
    return deleted


async def archive_calls(
    sessions: async_sessionmaker[AsyncSession],
    path: Path,
    cutoff: datetime,
    *,
    now: datetime,
    window_days: int,
    chunk: int = DEFAULT_CHUNK,
) -> ArchiveResult:
    """Archive to `path` the call records recorded and occurred before `cutoff` (aware, outside
    the window at `now`), then delete them, `chunk` records per transaction. Safe to run again
    and to interrupt at any point."""
    check_cutoff(cutoff, now, window_days)
    if chunk < 1:
        raise ValueError(f"a chunk holds at least one record, not {chunk}")
    naive = cutoff.astimezone(UTC).replace(tzinfo=None)
    tally = _Tally()
    fd = _open(path)
    try:
        resumed = await _resume(sessions, fd, naive, tally)
        chunks, after = 0, ""
        while True:
            async with session_scope(sessions) as session:
                rows = (
                    await session.execute(
                        _SELECT, {"cutoff": naive, "after": after, "limit": chunk}
                    )
                ).all()
                if not rows:
                    break
                _append(fd, [record(row) for row in rows])
                ids = [row[0] for row in rows]
                if await _delete(session, ids, naive, tally) != len(ids):
                    raise ArchiveUnreadable("locked records changed before they were deleted")
            chunks, after = chunks + 1, ids[-1]
    finally:
        os.close(fd)
    return ArchiveResult(
        path=str(path),
        cutoff=cutoff,
        archived=tally.count - resumed,
        resumed=resumed,
        credits=tally.credits,
        exact_credits=tally.exact_credits,
        chunks=chunks,
    )
