"""Batch in, priced charges out: stream entries to validated events to `UsageCharge`s.

No I/O here. Every entry ends in exactly one of: a valid event, or a `DeadLetter` with a machine
reason and a human detail; a bad entry never stops the rest of its batch.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from metering.errors import PermanentError
from metering.events import STREAM_FIELD, UsageEvent, parse_event
from metering.ledger import CallFacts, UsageCharge
from metering.pricing import CallCost, Catalog, TokenUsage, charge_exact_credits

MAX_DETAIL = 500


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: its stream, id, raw fields, and deliveries so far (>= 1).

    Field bytes that are not UTF-8 are held as lone surrogates (`surrogateescape`)."""

    stream: str
    entry_id: str
    fields: Mapping[str, str]
    deliveries: int = 1

    @property
    def added_at_ms(self) -> int:
        """When the entry was added (the millisecond part of its stream id)."""
        return int(self.entry_id.split("-", 1)[0])

    def payload(self) -> str:
        """The entry's event JSON, or all its fields as JSON when it has no `event` field."""
        raw = self.fields.get(STREAM_FIELD)
        return raw if raw is not None else json.dumps(dict(self.fields), sort_keys=True)


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


@dataclass(frozen=True)
class Priced:
    parsed: Parsed
    cost: CallCost


def parse_entries(
    entries: Iterable[Entry],
) -> tuple[list[Parsed], list[DeadLetter], list[Entry]]:
    """Validate each entry's event: valid events, dead letters, and repeats.

    A later entry with the event id and payload of an earlier one is a repeat (nothing to
    charge). Entries with one id but different payloads are all kept: the ledger records the
    first, and the drain dead-letters the others as conflicts.
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


CONFLICT_REASON = "conflicting_duplicate"


def conflict(entry: Entry, event_id: str) -> DeadLetter:
    return DeadLetter(
        entry,
        CONFLICT_REASON,
        f"event {event_id} was already received with a different payload; the first one stands",
        event_id,
    )


def price_events(
    parsed: Iterable[Parsed], catalog: Catalog
) -> tuple[list[Priced], list[DeadLetter]]:
    """Price each event at the catalog price in force at its `occurred_at`."""
    priced: list[Priced] = []
    dead: list[DeadLetter] = []
    for item in parsed:
        event = item.event
        try:
            cost = catalog.price_call(
                event.provider,
                event.model,
                token_usage(event),
                event.occurred_at,
                event.effective_tier,
            )
        except PermanentError as error:
            dead.append(DeadLetter(item.entry, error.code, error.message, event.event_id))
            continue
        priced.append(Priced(item, cost))
    return priced, dead


def token_usage(event: UsageEvent) -> TokenUsage:
    return TokenUsage(
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cached_input_tokens=event.cached_input_tokens,
        cache_write_tokens=event.cache_write_tokens,
        reasoning_tokens=event.reasoning_tokens,
    )


def to_charges(
    priced: Iterable[Priced],
    api_key_modes: Mapping[str, str],
    markup: Decimal,
    platform_fee_usd_per_million: Decimal,
) -> tuple[list[UsageCharge], list[DeadLetter]]:
    """Charges for events whose experiment has an `apiKeyMode`; others must be known first."""
    charges: list[UsageCharge] = []
    dead: list[DeadLetter] = []
    for item in priced:
        event = item.parsed.event
        mode = api_key_modes[event.experiment_id]
        try:
            exact = charge_exact_credits(item.cost, mode, markup, platform_fee_usd_per_million)
        except PermanentError as error:
            dead.append(DeadLetter(item.parsed.entry, error.code, error.message, event.event_id))
            continue
        charges.append(
            UsageCharge(
                event_id=event.event_id,
                experiment_id=event.experiment_id,
                exact_credits=exact,
                description=describe_usage(item.cost),
                call=call_facts(item),
                metadata=usage_metadata(item, mode, exact),
            )
        )
    return charges, dead


def call_facts(item: Priced) -> CallFacts:
    """The call as its call record keeps it: the catalog's names and tier, the event's counts."""
    event, cost = item.parsed.event, item.cost
    return CallFacts(
        provider=cost.provider,
        model=cost.model,
        tier=cost.tier,
        input_tokens=event.input_tokens,
        output_tokens=event.output_tokens,
        cached_input_tokens=event.cached_input_tokens,
        cache_write_tokens=event.cache_write_tokens,
        reasoning_tokens=event.reasoning_tokens,
        occurred_at=event.occurred_at,
        catalog_version=cost.catalog_version,
        payload_digest=item.parsed.digest,
    )


def describe_usage(cost: CallCost) -> str:
    usage = cost.usage
    return (
        f"{cost.provider}/{cost.model}: {usage.prompt_tokens:,} input, "
        f"{usage.output_tokens:,} output tokens"
    )


def usage_metadata(item: Priced, api_key_mode: str, exact_credits: Decimal) -> dict[str, Any]:
    """A USAGE row's metadata: the platform's camelCase keys first, then ours beside them."""
    event, cost = item.parsed.event, item.cost
    metadata: dict[str, Any] = {
        "experimentId": event.experiment_id,
        "tier": cost.tier,
        "provider": cost.provider,
        "model": cost.model,
        "inputTokens": event.input_tokens,
        "outputTokens": event.output_tokens,
        "eventId": event.event_id,
        "cachedInputTokens": event.cached_input_tokens,
        "cacheWriteTokens": event.cache_write_tokens,
        "reasoningTokens": event.reasoning_tokens,
        "occurredAt": event.occurred_at.isoformat(),
        "apiKeyMode": api_key_mode,
        "costUsd": str(cost.usd),
        "exactCredits": str(exact_credits),
        "prices": dict(cost.prices),
        "longContext": cost.long_context,
        "catalogVersion": cost.catalog_version,
        "payloadDigest": item.parsed.digest,
    }
    if (event.provider, event.model) != (cost.provider, cost.model):
        metadata["reportedAs"] = f"{event.provider}/{event.model}"
    if event.metadata is not None:
        metadata["eventMetadata"] = event.metadata
    return metadata


def describe(error: ValidationError) -> str:
    """A validation error in one line: `field: message; field: message`."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"]) or "event"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)[:MAX_DETAIL]


def _is_utf8(raw: str) -> bool:
    """False when the entry's bytes were not UTF-8 (the drain keeps them as lone surrogates)."""
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


def split(items: Sequence[Any]) -> tuple[Sequence[Any], Sequence[Any]]:
    """Two halves, for isolating an item that fails a whole batch."""
    middle = len(items) // 2
    return items[:middle], items[middle:]
