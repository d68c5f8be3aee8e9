"""Price: validated events to their catalog cost, and costs to charges in credits.

No I/O here. The catalog price is that in force at the event's `occurred_at`; the charge in
credits depends on the experiment's `apiKeyMode`, read with the batch (`record`).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from metering.errors import PermanentError
from metering.ledger.charging import CallFacts, UsageCharge
from metering.pricing import CallCost, Catalog, TokenUsage, charge_exact_credits
from metering.usage.event import UsageEvent
from metering.usage.parse import DeadLetter, Parsed


@dataclass(frozen=True)
class Priced:
    parsed: Parsed
    cost: CallCost


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
    """Charges for events whose experiment has an `apiKeyMode` (every one in `api_key_modes`)."""
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
                call=call_facts(item),
                api_key_mode=mode,
                event_metadata=event.metadata,
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
