"""Pricing commands: list the catalog's prices and price one call."""

from datetime import UTC, datetime
from decimal import Decimal

import typer
from rich.table import Table

from metering.cli.app import app
from metering.cli.common import console, fail, print_json
from metering.errors import MeteringError
from metering.pricing import NoPriceAt, TokenUsage, charge_exact_credits, get_catalog
from metering.pricing.catalog import Catalog
from metering.pricing.schema import STANDARD_TIER
from metering.settings import get_settings

TOKENS = typer.Option(0, min=0, help="Tokens of this class (classes are disjoint).")


def _catalog() -> Catalog:
    try:
        return get_catalog(get_settings().metering_price_catalog)
    except MeteringError as error:
        fail(f"{error} [{error.code}]")


def _instant(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at {text!r} is not an RFC 3339 time such as 2025-06-10T12:00:00Z")
    if moment.tzinfo is None:
        fail(f"--at {text!r} needs a UTC offset, e.g. Z or +02:00")
    return moment


@app.command()
def prices(
    provider: str | None = typer.Option(None, help="Only this provider."),
    at: str | None = typer.Option(
        None, help="Prices in force at this RFC 3339 time (default now)."
    ),
) -> None:
    """List USD per million tokens for every model (input, cached, cache write, output)."""
    catalog = _catalog()
    moment = _instant(at)
    table = Table(
        title=f"Prices at {moment.isoformat()} (USD per 1M tokens, catalog {catalog.version})"
    )
    table.add_column("provider", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for column in ("input", "cached", "cache write", "output", "long context"):
        table.add_column(column, justify="right")
    table.add_column("tiers")
    table.add_column("since")
    try:
        models = list(catalog.models(provider))
    except MeteringError as error:
        fail(f"{error} [{error.code}]")
    for resolved in models:
        try:
            period = resolved.period_at(moment)
        except NoPriceAt:
            continue
        rates = period.per_class()
        long = period.long_context
        table.add_row(
            resolved.provider_id,
            resolved.model.id,
            str(rates["input"]),
            str(rates["cached_input"]),
            str(rates["cache_write"]),
            str(rates["output"]),
            f"> {long.above_prompt_tokens:,}: {long.input} / {long.output}" if long else "",
            ", ".join(f"{name} x{m}" for name, m in resolved.tiers().items() if name != "standard"),
            period.from_.date().isoformat(),
        )
    console.print(table)


@app.command()
def price(
    provider: str = typer.Option(..., help="Provider id, e.g. openai."),
    model: str = typer.Option(..., help="Model id or alias, e.g. gpt-4o-2024-08-06."),
    input_tokens: int = typer.Option(
        ..., min=0, help="Fresh prompt tokens (no cache reads/writes)."
    ),
    output_tokens: int = typer.Option(..., min=0, help="Generated tokens, reasoning included."),
    cached_input_tokens: int = TOKENS,
    cache_write_tokens: int = TOKENS,
    reasoning_tokens: int = TOKENS,
    batch: bool = typer.Option(False, "--batch", help="Priced as the batch tier."),
    tier: str = typer.Option(STANDARD_TIER, help="Service tier: standard, batch, flex..."),
    at: str | None = typer.Option(None, help="When the call happened, RFC 3339 (default now)."),
    api_key_mode: str = typer.Option("system", help="system (our key) or own (the user's key)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Price one call: exact USD and exact (fractional) credits, with the prices used."""
    if batch and tier not in (STANDARD_TIER, "batch"):
        fail(f"--batch conflicts with --tier {tier}")
    settings = get_settings()
    catalog = _catalog()
    moment = _instant(at)
    try:
        usage = TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
            cache_write_tokens=cache_write_tokens,
            reasoning_tokens=reasoning_tokens,
        )
        cost = catalog.price_call(provider, model, usage, moment, "batch" if batch else tier)
        credits = charge_exact_credits(
            cost,
            api_key_mode,
            settings.metering_markup,
            settings.metering_platform_fee_usd_per_million,
        )
    except MeteringError as error:
        fail(f"{error} [{error.code}]")
    if as_json:
        print_json({**cost.audit(), "api_key_mode": api_key_mode, "credits": str(credits)})
        return
    context = ", long context" if cost.long_context else ""
    console.print(
        f"{cost.provider}/{cost.model} ({cost.tier}{context}) at {moment.isoformat()}: "
        f"${cost.usd} = {credits} credits ({api_key_mode} key)"
    )
    for token_class, rate in cost.prices.items():
        console.print(f"  {token_class:>12}: ${Decimal(rate)} per 1M tokens")
    console.print(
        f"  catalog {cost.catalog_version}, prices since {cost.effective_from.isoformat()}"
    )
