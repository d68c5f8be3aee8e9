"""Usage recorded as the pipeline records it: event documents priced by ingest, charged by the
ledger. For tests that read usage back."""

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.ledger import charging
from metering.ops.models import MAACExperiment
from metering.pricing import get_catalog
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry
from tests.usage.helpers import event, raw

__all__ = ["charge_events", "event"]


async def charge_events(
    session: AsyncSession,
    documents: Sequence[dict[str, Any]],
    *,
    markup: Decimal = Decimal(1),
    platform_fee: Decimal = Decimal(0),
) -> tuple[charging.UsageOutcome, list[charging.UsageCharge]]:
    """Price and charge these events in the caller's transaction; every one must be priced."""
    entries = [Entry("s", f"1-{n}", raw(document)) for n, document in enumerate(documents)]
    parsed, dead, _ = parse_entries(entries)
    priced, unpriced = price_events(parsed, get_catalog(None))
    experiment_ids = {document["experiment_id"] for document in documents}
    rows = await session.execute(
        select(MAACExperiment.id, MAACExperiment.api_key_mode).where(
            MAACExperiment.id.in_(experiment_ids)
        )
    )
    modes = {experiment_id: mode for experiment_id, mode in rows}
    charges, refused = to_charges(priced, modes, markup, platform_fee)
    assert dead == unpriced == refused == []
    return await charging.charge_usage(session, charges), charges
