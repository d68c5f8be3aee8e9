"""The naive design, for comparison only: one Celery task per event, one transaction per event.

What a team would build first: the producer sends a task per LLM call; the task validates and
prices the event (the product's own code) and charges it in its own transaction with the fewest
statements that are still exactly once. The rows are the product's, so `reconcile` and the
exactly-once check apply unchanged. Celery runs with its defaults (early acknowledgement,
prefetch of four), which favours it.
Run by the benchmark as `celery -A bench.naive_app worker -Q naive`.
"""

import json
from datetime import UTC
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.errors import PermanentError, TransientError
from metering.ledger import charging, journal
from metering.ops.db import run_in_transaction
from metering.ops.ids import cuid
from metering.ops.settings import Settings, get_settings
from metering.pricing import get_catalog
from metering.pricing.money import credits_due
from metering.tasks import runtime
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry

QUEUE = "naive"
TASK = "metering.bench.naive.charge_one"
READY = "naive worker ready"


def make_app(broker_url: str, prefix: str) -> Celery:
    """The naive app; its keys live under `<prefix>:naive-celery:`, apart from the product's."""
    celery = Celery("bench-naive")
    celery.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": f"{prefix}:naive-celery:"},
        task_default_queue=QUEUE,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


_settings = get_settings()
app = make_app(_settings.broker_url, _settings.metering_redis_prefix)


@worker_ready.connect
def _announce(**_: Any) -> None:
    print(READY, flush=True)


@app.task(name=TASK, autoretry_for=(TransientError,), max_retries=8, retry_backoff=True)
def charge_one(payload: str) -> None:
    """Validate, price and charge one event in one transaction."""
    current = runtime.get_runtime()
    current.run(charge(current.sessions, current.settings, payload))


_LOCK_EXPERIMENT = text(
    'SELECT "userId" AS user_id, "apiKeyMode" AS mode, "exactCreditsUsed" AS exact '
    'FROM "MAACExperiment" WHERE id = :id FOR UPDATE'
)
_INSERT = text(
    'INSERT INTO "CreditTransaction" (id, "userId", type, amount, description, metadata, '
    '"idempotencyKey", "experimentId") VALUES (:id, :user_id, \'USAGE\', :amount, :description, '
    "CAST(:metadata AS jsonb), :key, :experiment_id) "
    'ON CONFLICT ("idempotencyKey") DO NOTHING RETURNING id'
)
_RECORD = text(
    'INSERT INTO "UsageCall" ("eventId", "experimentId", "userId", provider, model, tier, '
    '"inputTokens", "outputTokens", "cachedInputTokens", "cacheWriteTokens", "reasoningTokens", '
    '"exactCredits", credits, "occurredAt", "catalogVersion", "payloadDigest") VALUES (:event_id, '
    ":experiment_id, :user_id, :provider, :model, :tier, :input, :output, :cached, :cache_write, "
    ":reasoning, :exact, :credits, :occurred_at, :catalog_version, :digest)"
)
_DEBIT = text('UPDATE "User" SET credits = credits + :amount, "updatedAt" = now() WHERE id = :id')
_USE = text(
    'UPDATE "MAACExperiment" SET "creditsUsed" = "creditsUsed" - :amount, '
    '"exactCreditsUsed" = :exact, "updatedAt" = now() WHERE id = :id'
)


async def charge(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, payload: str
) -> None:
    """The fewest statements that still charge exactly once with the exact-cost carry: lock the
    experiment, insert the row unless its key exists and its call record, then move the two
    balances."""
    parsed, invalid, _ = parse_entries([Entry("", "0-0", {"event": payload})])
    priced, unpriced = price_events(parsed, get_catalog(settings.metering_price_catalog))
    if invalid or unpriced:
        raise PermanentError((invalid + unpriced)[0].detail, code="invalid_event")
    (item,) = priced
    event = item.parsed.event
    row_id = cuid()

    async def work(session: AsyncSession) -> None:
        experiment = (await session.execute(_LOCK_EXPERIMENT, {"id": event.experiment_id})).one()
        (usage,), _ = to_charges(
            [item],
            {event.experiment_id: experiment.mode},
            settings.metering_markup,
            settings.metering_platform_fee_usd_per_million,
        )
        amount = -credits_due(experiment.exact, usage.exact_credits)
        call = usage.call
        row = charging.UsageGroup(
            event.experiment_id,
            call.provider,
            call.model,
            call.tier,
            call.catalog_version,
            usage.api_key_mode,
            usage.event_id,
        )
        row.add(usage, amount)
        inserted = await session.scalar(
            _INSERT,
            {
                "id": row_id,
                "user_id": experiment.user_id,
                "amount": amount,
                "description": row.description(),
                "metadata": json.dumps(row.metadata(), separators=(",", ":")),
                "key": journal.stored_key(journal.KeyKind.USAGE, usage.event_id),
                "experiment_id": event.experiment_id,
            },
        )
        if inserted is None:
            return  # charged before: a redelivery
        await session.execute(
            _RECORD,
            {
                "event_id": usage.event_id,
                "experiment_id": event.experiment_id,
                "user_id": experiment.user_id,
                "provider": call.provider,
                "model": call.model,
                "tier": call.tier,
                "input": call.input_tokens,
                "output": call.output_tokens,
                "cached": call.cached_input_tokens,
                "cache_write": call.cache_write_tokens,
                "reasoning": call.reasoning_tokens,
                "exact": usage.exact_credits,
                "credits": -amount,
                "occurred_at": call.occurred_at.astimezone(UTC).replace(tzinfo=None),
                "catalog_version": call.catalog_version,
                "digest": charging.stored_digest(call.payload_digest),
            },
        )
        await session.execute(_DEBIT, {"amount": amount, "id": experiment.user_id})
        exact = experiment.exact + usage.exact_credits
        await session.execute(_USE, {"amount": amount, "exact": exact, "id": event.experiment_id})

    await run_in_transaction(sessions, work)
