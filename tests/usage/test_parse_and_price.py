"""Parsing and pricing a batch (`usage.parse`, `usage.price`), without I/O."""

from decimal import Decimal

from metering.pricing import get_catalog
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry
from tests.usage.helpers import event, raw


def entry(n: int, fields: dict[str, str]) -> Entry:
    return Entry("s", f"1700000000000-{n}", fields)


def test_parse_sorts_entries_into_events_dead_letters_and_repeats() -> None:
    first = event("exp")
    entries = [
        entry(0, raw(first)),
        entry(1, raw(first)),
        entry(2, raw({**first, "output_tokens": 1})),
        entry(3, {"event": "[]"}),
        entry(4, {}),
    ]
    parsed, dead, repeats = parse_entries(entries)
    assert [p.entry.entry_id for p in parsed] == ["1700000000000-0", "1700000000000-2"]
    assert [e.entry_id for e in repeats] == ["1700000000000-1"]
    assert [d.reason for d in dead] == ["invalid_event", "missing_event"]


def test_charges_keep_the_call_as_the_catalog_names_it() -> None:
    document = event("exp", model="openai/gpt-4o-mini", cached_input_tokens=100, batch=True)
    parsed, _, _ = parse_entries([entry(0, raw(document))])
    priced, dead = price_events(parsed, get_catalog(None))
    assert dead == []
    (charge,), dead = to_charges(priced, {"exp": "system"}, Decimal(1), Decimal(0))
    call = charge.call
    assert (charge.event_id, charge.experiment_id) == (document["event_id"], "exp")
    assert (call.provider, call.model, call.tier) == ("openai", "gpt-4o-mini", "batch")
    assert (call.input_tokens, call.output_tokens, call.cached_input_tokens) == (
        document["input_tokens"],
        document["output_tokens"],
        100,
    )
    assert call.payload_digest == parsed[0].digest
    assert call.catalog_version == priced[0].cost.catalog_version
    assert charge.api_key_mode == "system"
    assert charge.exact_credits > 0


def test_unknown_api_key_mode_is_a_dead_letter() -> None:
    parsed, _, _ = parse_entries([entry(0, raw(event("exp")))])
    priced, _ = price_events(parsed, get_catalog(None))
    charges, dead = to_charges(priced, {"exp": "borrowed"}, Decimal(1), Decimal(0))
    assert charges == []
    assert [d.reason for d in dead] == ["unknown_api_key_mode"]


def test_own_key_is_charged_the_platform_fee() -> None:
    parsed, _, _ = parse_entries([entry(0, raw(event("exp", input_tokens=1000, output_tokens=0)))])
    priced, _ = price_events(parsed, get_catalog(None))
    (charge,), _ = to_charges(priced, {"exp": "own"}, Decimal(1), Decimal("0.5"))
    assert charge.exact_credits == Decimal("0.5")
