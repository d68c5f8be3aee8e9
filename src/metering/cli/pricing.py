"""Pricing commands: list the catalog's prices, price one call, import a peer's price list.

`metering price` prints with `typer.echo`: rich and the settings' other knobs are loaded only by the
commands that use them, so that pricing one call starts fast.
"""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import typer

from metering.cli import common
from metering.cli.app import app
from metering.cli.common import fail, print_json
from metering.errors import MeteringError
from metering.ops.pricing_settings import PricingSettings, read_pricing_settings
from metering.pricing import NoPriceAt, TokenUsage, charge_exact_credits, get_catalog
from metering.pricing.catalog import Catalog, shipped_layers
from metering.usage.event import STANDARD_TIER

TOKENS = typer.Option(0, min=0, help="Tokens of this class (classes are disjoint).")
ONLY_PROVIDERS = typer.Option(None, help="Only these catalog providers (repeatable).")


def _catalog(settings: PricingSettings) -> Catalog:
    try:
        return get_catalog(settings.metering_price_catalog)
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


prices_app = typer.Typer(
    help="List USD per million tokens for every model, or import a peer's price list.",
    invoke_without_command=True,
)
app.add_typer(prices_app, name="prices")


@prices_app.callback()
def prices(
    context: typer.Context,
    provider: str | None = typer.Option(None, help="Only this provider."),
    at: str | None = typer.Option(
        None, help="Prices in force at this RFC 3339 time (default now)."
    ),
) -> None:
    """List USD per million tokens for every model (input, cached, cache write, output)."""
    if context.invoked_subcommand is not None:
        return
    from rich.table import Table

    catalog = _catalog(read_pricing_settings())
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
        window = period.window_at(moment.astimezone(UTC))
        rates = (period if window is None else period.time_of_day[window]).per_class()
        long = period.long_context
        table.add_row(
            resolved.provider_id,
            resolved.model.id,
            str(rates["input"]),
            str(rates["cached_input"]),
            str(rates["cache_write"]),
            str(rates["output"]),
            f"> {long.above_prompt_tokens:,}: {long.input} / {long.output}" if long else "",
            _tiers_text(resolved.tiers()),
            period.from_.date().isoformat() + ("" if window is None else " (time of day)"),
        )
    common.console.print(table)


def _tiers_text(tiers: dict[str, dict[str, Decimal]]) -> str:
    """`batch x0.5`, or `batch x0.5 (cached_input x1)` when classes differ."""
    shown = []
    for name, multipliers in tiers.items():
        if name == STANDARD_TIER:
            continue
        common = max(set(multipliers.values()), key=list(multipliers.values()).count)
        apart = ", ".join(
            f"{key} x{value}" for key, value in multipliers.items() if value != common
        )
        shown.append(f"{name} x{common}" + (f" ({apart})" if apart else ""))
    return ", ".join(shown)


@prices_app.command("import")
def import_prices(
    source: str | None = typer.Option(
        None,
        "--from",
        help="genai-prices' data file (its JSON list of providers), else its package.",
    ),
    output: str = typer.Option(
        "prices-import.toml",
        help="File to write for review: .toml (an operator's catalog file) or .json (the "
        "packaged imported layer).",
    ),
    with_changes: bool = typer.Option(
        False, "--with-changes", help="Also write the models whose prices differ from ours."
    ),
    provider: list[str] | None = ONLY_PROVIDERS,
    hand_kept_only: bool = typer.Option(
        False,
        "--hand-kept-only",
        help="Compare with the hand-kept layer alone (to rebuild the packaged imported layer).",
    ),
) -> None:
    """Convert genai-prices' data into catalog entries, show how they differ, write them to a file.

    Never changes the catalog: review the file, then use it as METERING_PRICE_CATALOG or ship it.
    """
    from rich.table import Table

    from metering.pricing.catalog_writer import grouped, to_json, to_toml
    from metering.pricing.peer_import import compare, convert, load_peer_data

    catalog = (
        Catalog([shipped_layers()[-1]]) if hand_kept_only else _catalog(read_pricing_settings())
    )
    today = datetime.now(UTC).date()
    try:
        conversion = convert(load_peer_data(None if source is None else Path(source)), today)
    except MeteringError as error:
        fail(f"{error} [{error.code}]")
    differences = [
        difference
        for difference in compare(catalog, conversion)
        if not provider or difference.converted.provider in provider
    ]
    table = Table(title=f"genai-prices against catalog {catalog.version} (USD per 1M tokens)")
    for column in ("provider", "model", "status", "input", "cached", "output", "tiers", "what"):
        table.add_column(column, no_wrap=column in ("provider", "model"))
    for difference in differences:
        if difference.status == "same":
            continue
        entry = difference.converted.entry
        current = entry["prices"][-1]
        table.add_row(
            difference.converted.provider,
            str(entry["id"]),
            difference.status,
            str(current["input"]),
            str(current.get("cached_input", "")),
            str(current["output"]),
            ", ".join(entry["tiers"]),
            difference.detail or "; ".join(difference.converted.notes),
        )
    common.console.print(table)
    counts = {status: 0 for status in ("new", "differs", "same")}
    for difference in differences:
        counts[difference.status] += 1
    names = {
        provider_id: catalog.provider_name(provider_id) for provider_id in catalog.provider_ids
    }
    providers = grouped(differences, names, with_changes)
    target = Path(output)
    if target.suffix == ".json":
        text = to_json(providers, today)
    else:
        header = (
            f"Catalog entries converted from genai-prices data on {today.isoformat()} by "
            "`metering prices import`.\nReview every entry against its source before use."
        )
        text = to_toml(providers, today, header)
    target.write_text(text)
    written = sum(len(entry["models"]) for entry in providers.values())
    common.console.print(
        f"{counts['new']} new, {counts['differs']} differ, {counts['same']} the same, "
        f"{len(conversion.skipped)} left out; {written} written to {output} for review"
        + ("" if with_changes else " (changed models are shown, not written: --with-changes)")
    )


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
    settings = read_pricing_settings()
    catalog = _catalog(settings)
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
    typer.echo(
        f"{cost.provider}/{cost.model} ({cost.tier}{context}) at {moment.isoformat()}: "
        f"${cost.usd} = {credits} credits ({api_key_mode} key)"
    )
    for token_class, rate in cost.prices.items():
        typer.echo(f"  {token_class:>12}: ${Decimal(rate)} per 1M tokens")
    typer.echo(f"  catalog {cost.catalog_version}, prices since {cost.effective_from.isoformat()}")
