"""Parse: stream entries to validated events, or dead letters saying why not.

No I/O here. Every entry ends in exactly one of: a valid event, a repeat of an earlier entry of
the batch, or a `DeadLetter` with a machine reason and a human detail; a bad entry never stops
the rest of its batch.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from metering.usage.event import STREAM_FIELD, UsageEvent, parse_event
from metering.usage.streams import Entry
from metering.usage.window import OUTSIDE_WINDOW, window_start

MAX_DETAIL = 500
CONFLICT_REASON = "conflicting_duplicate"


@dataclass(frozen=True)
class DeadLetter:
    """An entry that can never be charged as sent. `reason` is a stable code."""

    entry: Entry
    reason: str
    detail: str
    event_id: str | None = None


@dataclass(frozen=True)
class Parsed:
    entry: Entry
    event: UsageEvent
    digest: str


def parse_entries(
    entries: Iterable[Entry],
) -> tuple[list[Parsed], list[DeadLetter], list[Entry]]:
    """Validate each entry's event: valid events, dead letters, and repeats.

    A later entry with the event id and payload of an earlier one is a repeat (nothing to
    charge). Entries with one id but different payloads are all kept: the ledger records the
    first, and the others are dead-lettered as conflicts.
    """
    parsed: list[Parsed] = []
    dead: list[DeadLetter] = []
    repeats: list[Entry] = []
    digests: dict[str, set[str]] = {}
    for entry in entries:
        raw = entry.fields.get(STREAM_FIELD)
        if raw is None:
            dead.append(DeadLetter(entry, "missing_event", f"entry has no {STREAM_FIELD!r} field"))
            continue
        if not _is_utf8(raw):
            dead.append(DeadLetter(entry, "invalid_event", "the event is not UTF-8 text"))
            continue
        try:
            event = parse_event(raw)
        except ValidationError as error:
            dead.append(DeadLetter(entry, "invalid_event", describe(error), _event_id(raw)))
            continue
        digest = event.digest()
        if digest in digests.setdefault(event.event_id, set()):
            repeats.append(entry)
            continue
        digests[event.event_id].add(digest)
        parsed.append(Parsed(entry, event, digest))
    return parsed, dead, repeats


def within_window(
    parsed: Iterable[Parsed], now: datetime, window_days: int
) -> tuple[list[Parsed], list[DeadLetter]]:
    """Events inside the exactly-once window at `now`, and dead letters of those older: their
    call records may have been archived, so they could be charged a second time."""
    inside: list[Parsed] = []
    dead: list[DeadLetter] = []
    start = window_start(now, window_days)  # once per batch, not once per event
    for item in parsed:
        event = item.event
        if event.occurred_at >= start:
            inside.append(item)
            continue
        detail = (
            f"occurred_at {event.occurred_at.isoformat()} is before the {window_days}-day "
            f"exactly-once window (from {start.isoformat()})"
        )
        dead.append(DeadLetter(item.entry, OUTSIDE_WINDOW, detail, event.event_id))
    return inside, dead


def conflict(entry: Entry, event_id: str) -> DeadLetter:
    return DeadLetter(
        entry,
        CONFLICT_REASON,
        f"event {event_id} was already received with a different payload; the first one stands",
        event_id,
    )


def describe(error: ValidationError) -> str:
    """A validation error in one line: `field: message; field: message`."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"]) or "event"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)[:MAX_DETAIL]


def _is_utf8(raw: str) -> bool:
    """False when the entry's bytes were not UTF-8 (the stream reader keeps them as lone
    surrogates)."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _event_id(raw: str) -> str | None:
    """The event id of an invalid event, when it can still be read."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    value = document.get("event_id") if isinstance(document, dict) else None
    return value[:128] if isinstance(value, str) else None
