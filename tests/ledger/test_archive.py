"""Archiving call records: on disk before deleted, in the file once, never inside the window."""

import gzip
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import archive as call_archive
from metering.ledger.archive import COLUMNS, InsideWindow, archive_calls, record
from metering.ledger.reconcile import find_violations
from metering.ops.db import session_scope
from metering.ops.models import ArchivedUsage
from tests.factories import create_experiment, create_user
from tests.support import metering
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime.now(UTC)
WINDOW = 35
CUTOFF = datetime(2025, 10, 1, tzinfo=UTC)
OLD = datetime(2025, 9, 1, 12, tzinfo=UTC)
NAMES = ", ".join(f'"{c}"' for c in COLUMNS)
SELECT = f'SELECT {NAMES} FROM "UsageCall" WHERE "experimentId" = :e'


async def calls_of(sessions: Sessions, experiment_id: str) -> dict[str, dict[str, Any]]:
    """The experiment's call records, as the archive writes them, by event id."""
    async with session_scope(sessions) as session:
        rows = await session.execute(text(SELECT), {"e": experiment_id})
    return {row[0]: record(row) for row in rows}


async def charged(sessions: Sessions, count: int, **changes: Any) -> tuple[str, list[str]]:
    """An experiment with `count` calls charged now; their event ids."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
        docs = [event(experiment_id, n, **changes) for n in range(count)]
        await charge_events(session, docs)
    return experiment_id, [doc["event_id"] for doc in docs]


async def backdate(sessions: Sessions, ids: Sequence[str], created: datetime) -> None:
    """As if these calls had been recorded at `created` (UTC)."""
    async with session_scope(sessions) as session:
        await session.execute(
            text('UPDATE "UsageCall" SET "createdAt" = :at WHERE "eventId" = ANY(:ids)'),
            {"at": created.replace(tzinfo=None), "ids": list(ids)},
        )


def archived(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line in handle]


async def run(sessions: Sessions, path: Path, chunk: int = 1_000) -> call_archive.ArchiveResult:
    return await archive_calls(sessions, path, CUTOFF, now=NOW, window_days=WINDOW, chunk=chunk)


def totals(calls: dict[str, dict[str, Any]]) -> tuple[int, int, Decimal]:
    """What reconcile sums of an experiment's call records: count, credits, exact credits."""
    rows = calls.values()
    return (
        len(rows),
        sum(r["credits"] for r in rows),
        sum((Decimal(r["exactCredits"]) for r in rows), Decimal(0)),
    )


async def test_archives_exactly_the_old_records_once_and_again_changes_nothing(
    sessions: Sessions, tmp_path: Path
) -> None:
    experiment_id, ids = await charged(sessions, 9, occurred_at=OLD.isoformat())
    # Six recorded long ago; three recorded now (a late arrival): kept, though they occurred
    # before the cutoff. And calls that occurred after the cutoff are kept whenever recorded.
    await backdate(sessions, ids[:6], OLD + timedelta(hours=1))
    later, later_ids = await charged(
        sessions, 2, occurred_at=(CUTOFF + timedelta(days=1)).isoformat()
    )
    await backdate(sessions, later_ids, OLD)
    before = await calls_of(sessions, experiment_id)
    kept_later = await calls_of(sessions, later)
    path = tmp_path / "calls.jsonl.gz"

    first = await run(sessions, path, chunk=4)
    size = path.stat().st_size
    again = await run(sessions, path, chunk=4)

    old = {event_id: before[event_id] for event_id in ids[:6]}
    assert sorted(archived(path), key=lambda r: r["eventId"]) == sorted(
        old.values(), key=lambda r: r["eventId"]
    )
    assert (first.archived, first.resumed, first.chunks) == (6, 0, 2)
    assert first.credits == totals(old)[1]
    assert first.exact_credits == totals(old)[2]
    assert (again.archived, again.resumed, again.chunks) == (0, 0, 0)
    assert path.stat().st_size == size
    kept = await calls_of(sessions, experiment_id)
    assert kept == {event_id: before[event_id] for event_id in ids[6:]}
    assert await calls_of(sessions, later) == kept_later
    whole = totals(before)
    assert totals(kept) == (whole[0] - 6, whole[1] - first.credits, whole[2] - first.exact_credits)
    async with session_scope(sessions) as session:
        # The archived calls' sums stand in for them: the ledger still reconciles.
        assert await find_violations(session) == []
        sums = await session.execute(
            select(func.sum(ArchivedUsage.calls), func.sum(ArchivedUsage.credits)).where(
                ArchivedUsage.experiment_id == experiment_id
            )
        )
    assert tuple(sums.one()) == (6, first.credits)


async def test_a_failed_delete_deletes_nothing_and_the_next_run_finishes_once(
    sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id, ids = await charged(sessions, 5, occurred_at=OLD.isoformat())
    await backdate(sessions, ids, OLD)
    before = await calls_of(sessions, experiment_id)
    path = tmp_path / "calls.jsonl.gz"

    async def crash(*args: Any) -> list[Any]:
        raise OSError("the process died before deleting")

    with monkeypatch.context() as patch:
        patch.setattr(call_archive, "_delete", crash)
        with pytest.raises(OSError, match="died"):
            await run(sessions, path)
    assert await calls_of(sessions, experiment_id) == before
    assert sorted(r["eventId"] for r in archived(path)) == sorted(ids)
    # A second run that died while writing its member leaves a partial one behind.
    whole = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(gzip.compress(b'{"eventId": "x"}\n')[:12])

    resumed = await run(sessions, path)

    assert (resumed.archived, resumed.resumed) == (0, 5)
    assert resumed.credits == totals(before)[1]
    assert path.read_bytes() == whole
    assert await calls_of(sessions, experiment_id) == {}
    assert sorted(archived(path), key=lambda r: r["eventId"]) == sorted(
        before.values(), key=lambda r: r["eventId"]
    )


async def test_a_cutoff_inside_the_window_is_refused(sessions: Sessions, tmp_path: Path) -> None:
    experiment_id, ids = await charged(sessions, 2, occurred_at=OLD.isoformat())
    await backdate(sessions, ids, OLD)
    before = await calls_of(sessions, experiment_id)
    path = tmp_path / "calls.jsonl.gz"
    for cutoff in (NOW - timedelta(days=WINDOW) + timedelta(seconds=1), NOW):
        with pytest.raises(InsideWindow):
            await archive_calls(sessions, path, cutoff, now=NOW, window_days=WINDOW)
    assert not path.exists()
    assert await calls_of(sessions, experiment_id) == before
    await run(sessions, path)  # leaves no backdated record to the other tests


async def test_the_command_refuses_the_window_and_archives_before_it(
    database_url: str, sessions: Sessions, tmp_path: Path
) -> None:
    experiment_id, ids = await charged(sessions, 3, occurred_at=OLD.isoformat())
    await backdate(sessions, ids, OLD)
    path = tmp_path / "calls.jsonl.gz"
    archive = ("calls", "archive", "--to", str(path), "--before")

    refused = metering(*archive, "30d", database_url=database_url)
    done = metering(*archive, "2025-10-01T00:00:00Z", "--json", database_url=database_url)

    assert refused.returncode == 2
    assert "inside the 35-day exactly-once window" in refused.stderr
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["archived"], summary["resumed"], summary["path"]) == (3, 0, str(path))
    assert sorted(r["eventId"] for r in archived(path)) == sorted(ids)
    assert await calls_of(sessions, experiment_id) == {}
