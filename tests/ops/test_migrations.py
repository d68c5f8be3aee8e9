"""Migrations agree with the models, run both ways, and create exactly Prisma's schema."""

import json
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.errors import PermanentError
from metering.ledger import charging, journal
from metering.ledger.reconcile import find_violations
from metering.ops import migrate
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from metering.ops.models import Base, CreditTransaction, TransactionType, UsageCall, User
from metering.pricing import get_catalog
from metering.pricing.money import whole_credits
from metering.usage.parse import parse_entries
from metering.usage.price import price_events, to_charges
from metering.usage.streams import Entry
from tests.prisma.cli import billing_sql
from tests.schema_snapshot import PLATFORM_TABLES, snapshot
from tests.usage.helpers import event, raw
from tests.usage_data import charge_events

ALL_TABLES = (
    *PLATFORM_TABLES,
    "UnbilledUsage",
    "StripeEvent",
    "UsageCall",
    "StripeCheckoutSession",
)


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []


async def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database: str) -> None:
    await migrate.upgrade_async(empty_database)
    first = await snapshot(empty_database, ALL_TABLES)
    await migrate.downgrade_async(empty_database, "base")
    emptied = await snapshot(empty_database, ALL_TABLES)
    assert emptied == {"columns": [], "indexes": [], "constraints": [], "enums": []}
    await migrate.upgrade_async(empty_database)
    assert await snapshot(empty_database, ALL_TABLES) == first


async def _run_prisma_sql(url: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for statement in billing_sql().split(";"):
                body = "\n".join(
                    line for line in statement.splitlines() if not line.startswith("--")
                ).strip()
                if body:
                    await connection.execute(text(body))
    finally:
        await engine.dispose()


async def test_first_migration_creates_what_prisma_creates(
    empty_database: str, database_url: str
) -> None:
    await migrate.upgrade_async(empty_database, "0001")
    ours = await snapshot(empty_database, PLATFORM_TABLES)
    await migrate.downgrade_async(empty_database, "base")
    await _run_prisma_sql(empty_database)
    assert await snapshot(empty_database, PLATFORM_TABLES) == ours


async def test_upgrade_adopts_tables_prisma_already_created(
    empty_database: str, database_url: str
) -> None:
    await _run_prisma_sql(empty_database)
    await migrate.upgrade_async(empty_database)
    assert await snapshot(empty_database, ALL_TABLES) == await snapshot(database_url, ALL_TABLES)


@pytest.fixture(scope="module")
async def schema(database_url: str) -> dict[str, Any]:
    return await snapshot(database_url, ALL_TABLES)


def _columns(schema: dict[str, Any], table: str) -> dict[str, tuple[Any, ...]]:
    return {c[1]: c[2:] for c in schema["columns"] if c[0] == table}


async def test_prisma_names_and_types(schema: dict[str, Any]) -> None:
    users = _columns(schema, "User")
    assert set(users) == {"id", "email", "name", "credits", "createdAt", "updatedAt"}
    assert users["id"][0] == "text"
    assert users["id"][4] == "NO"
    assert users["credits"][0] == "integer"
    assert users["credits"][5] == "0"
    for timestamp in ("createdAt", "updatedAt"):
        assert users[timestamp][:2] == ("timestamp without time zone", 3)
    assert users["createdAt"][5] == "CURRENT_TIMESTAMP"
    assert users["updatedAt"][5] is None, "Prisma's @updatedAt has no database default"

    transactions = _columns(schema, "CreditTransaction")
    assert transactions["type"][0] == "TransactionType"
    assert transactions["metadata"][0] == "jsonb"
    assert transactions["amount"][0] == "integer"
    assert {"stripePaymentId", "stripeCheckoutId", "idempotencyKey"} <= set(transactions)

    experiments = _columns(schema, "MAACExperiment")
    assert experiments["apiKeyMode"][5] == "'system'::text"
    assert experiments["creditsUsed"][0] == "integer"
    assert experiments["estimatedCredits"][4] == "YES"
    assert experiments["exactCreditsUsed"][:4] == ("numeric", None, 38, 18)

    assert schema["enums"] == [("TransactionType", ["PURCHASE", "USAGE", "REFUND", "ADJUSTMENT"])]


async def test_prisma_index_and_constraint_names(schema: dict[str, Any]) -> None:
    indexes = {name: definition for _, name, definition in schema["indexes"]}
    assert indexes["User_email_key"].startswith('CREATE UNIQUE INDEX "User_email_key"')
    assert indexes["User_email_idx"].endswith("USING btree (email)")
    assert indexes["CreditTransaction_userId_createdAt_idx"].endswith(
        'USING btree ("userId", "createdAt")'
    )
    assert indexes["CreditTransaction_type_idx"].endswith("USING btree (type)")
    assert indexes["CreditTransaction_idempotencyKey_key"].startswith("CREATE UNIQUE INDEX")

    constraints = {name: (kind, definition) for _, name, kind, definition in schema["constraints"]}
    for table in ALL_TABLES:
        assert constraints[f"{table}_pkey"][0] == "p"
    assert constraints["CreditTransaction_userId_fkey"] == (
        "f",
        'FOREIGN KEY ("userId") REFERENCES "User"(id) ON UPDATE CASCADE ON DELETE CASCADE',
    )
    assert constraints["MAACExperiment_userId_fkey"] == (
        "f",
        'FOREIGN KEY ("userId") REFERENCES "User"(id) ON UPDATE CASCADE ON DELETE SET NULL',
    )
    # Call records outlive users and experiments: no foreign key, so no delete cascades to them.
    assert [name for table, name, _, _ in schema["constraints"] if table == '"UsageCall"'] == [
        "UsageCall_pkey"
    ]
    assert indexes["UsageCall_experimentId_idx"].endswith('USING btree ("experimentId")')


# --------------------------------------------------------------------------------------------
# 0003: rows written before keep their meaning


async def _execute(url: str, statement: str, params: dict[str, Any] | None = None) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement), params or {})
    finally:
        await engine.dispose()


async def _scalars(url: str, *statements: str) -> list[Any]:
    """Run `statements` in one transaction; the first column of the last one's rows."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                result = await connection.execute(text(statement))
            return list(result.scalars()) if result.returns_rows else []
    finally:
        await engine.dispose()


def _old_usage_row(charge: charging.UsageCharge, user_id: str, amount: int) -> dict[str, Any]:
    """A USAGE row as the ledger wrote it before 0003: keyed by the bare event id."""
    return {
        "id": f"tx-{charge.event_id}",
        "user": user_id,
        "amount": amount,
        "key": charge.event_id,
        "experiment": charge.experiment_id,
        "metadata": json.dumps(_old_metadata(charge)),
    }


def _old_metadata(charge: charging.UsageCharge) -> dict[str, Any]:
    """The metadata of a per-call USAGE row as the ledger wrote it before 0005."""
    call = charge.call
    return {
        "experimentId": charge.experiment_id,
        "tier": call.tier,
        "provider": call.provider,
        "model": call.model,
        "inputTokens": call.input_tokens,
        "outputTokens": call.output_tokens,
        "eventId": charge.event_id,
        "cachedInputTokens": call.cached_input_tokens,
        "cacheWriteTokens": call.cache_write_tokens,
        "reasoningTokens": call.reasoning_tokens,
        "occurredAt": call.occurred_at.isoformat(),
        "exactCredits": str(charge.exact_credits),
        "catalogVersion": call.catalog_version,
        "payloadDigest": call.payload_digest,
    }


async def test_rows_written_before_0003_are_still_found_after_it(empty_database: str) -> None:
    """Usage, unbilled usage, a purchase, a clawback and an operator's adjustment written the
    old way (bare keys, no call records); after the upgrade every redelivery is a duplicate,
    every repost finds its row, nothing is charged twice, and reconcile is clean."""
    url = empty_database
    await migrate.upgrade_async(url, "0002")
    billed, unbilled = event("exp-owned"), event("exp-orphan", 1)
    entries = [Entry("s", f"1-{n}", raw(d)) for n, d in enumerate([billed, unbilled])]
    parsed, _, _ = parse_entries(entries)
    priced, _ = price_events(parsed, get_catalog(None))
    modes = {"exp-owned": "system", "exp-orphan": "system"}
    old_charges, _ = to_charges(priced, modes, Decimal(1), Decimal(0))
    owned_charge, orphan_charge = old_charges
    used = whole_credits(owned_charge.exact_credits)
    orphan_used = whole_credits(orphan_charge.exact_credits)
    statements = [
        'INSERT INTO "User" (id, email, credits, "updatedAt") '
        f"VALUES ('u-old', 'old@example.com', {1000 - 100 + 5 + 1 - used}, now())",
        'INSERT INTO "MAACExperiment" (id, name, "userId", "creditsUsed", "exactCreditsUsed", '
        f"\"updatedAt\") VALUES ('exp-owned', 'owned', 'u-old', {used}, "
        f"{owned_charge.exact_credits}, now()), ('exp-orphan', 'orphan', NULL, {orphan_used}, "
        f"{orphan_charge.exact_credits}, now())",
        'INSERT INTO "CreditTransaction" (id, "userId", type, amount, description, '
        '"idempotencyKey", "stripePaymentId", "stripeCheckoutId", metadata) VALUES '
        "('tx-p', 'u-old', 'PURCHASE', 1000, 'p', 'cs_old', 'pi_old', 'cs_old', "
        "'{\"amountTotalCents\": 1000}'), "
        "('tx-c', 'u-old', 'ADJUSTMENT', -100, 'c', 'ch_old:refunded:100', 'pi_old', NULL, NULL), "
        "('tx-o', 'u-old', 'ADJUSTMENT', 5, 'o', 'ticket-1', NULL, NULL, NULL), "
        "('tx-prisma', 'u-old', 'PURCHASE', 1, 'seed', NULL, 'pi_test_123', NULL, NULL)",
    ]
    for statement in statements:
        await _execute(url, statement)
    await _execute(
        url,
        'INSERT INTO "CreditTransaction" (id, "userId", type, amount, description, '
        '"idempotencyKey", "experimentId", metadata) '
        "VALUES (:id, :user, 'USAGE', :amount, 'usage', :key, :experiment, "
        "CAST(:metadata AS jsonb))",
        _old_usage_row(owned_charge, "u-old", -used),
    )
    await _execute(
        url,
        'INSERT INTO "UnbilledUsage" ("eventId", "experimentId", amount, metadata) '
        "VALUES (:key, :experiment, :amount, CAST(:metadata AS jsonb))",
        _old_usage_row(orphan_charge, "", -orphan_used),
    )

    await migrate.upgrade_async(url)

    engine = create_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    try:
        async with session_scope(sessions) as session:
            outcome, _ = await charge_events(session, [billed, unbilled])
            reposted = await journal.post_many(
                session,
                [
                    journal.Posting(
                        "u-old",
                        TransactionType.PURCHASE,
                        1000,
                        "p",
                        "cs_old",
                        stripe_payment_id="pi_old",
                    ),
                    journal.Posting(
                        "u-old",
                        TransactionType.ADJUSTMENT,
                        -100,
                        "c",
                        "ch_old:refunded:100",
                        stripe_payment_id="pi_old",
                    ),
                    journal.Posting("u-old", TransactionType.ADJUSTMENT, 5, "o", "ticket-1"),
                ],
            )
        assert outcome.duplicates == [billed["event_id"], unbilled["event_id"]]
        assert outcome.charged == outcome.unbilled == []
        assert [(p.transaction_id, p.created) for p in reposted] == [
            ("tx-p", False),
            ("tx-c", False),
            ("tx-o", False),
        ]
        async with session_scope(sessions) as session:
            assert await find_violations(session) == []
            user = await session.get(User, "u-old")
            assert user is not None
            assert user.credits == 1000 - 100 + 5 + 1 - used
            rows = await session.execute(
                select(CreditTransaction.id, CreditTransaction.idempotency_key)
            )
            keys = {row_id: key for row_id, key in rows}
            call = await session.get(UsageCall, owned_charge.event_id)
            orphan_call = await session.get(UsageCall, orphan_charge.event_id)
        assert keys == {
            "tx-p": "purchase:cs_old",
            "tx-c": "clawback:ch_old:refunded:100",
            "tx-o": "operator:ticket-1",
            "tx-prisma": None,
            f"tx-{owned_charge.event_id}": f"usage:{owned_charge.event_id}",
        }
        assert call is not None
        assert orphan_call is not None
        facts = owned_charge.call
        assert (call.user_id, call.credits, call.exact_credits) == (
            "u-old",
            used,
            owned_charge.exact_credits,
        )
        assert (call.provider, call.model, call.tier, call.input_tokens, call.output_tokens) == (
            facts.provider,
            facts.model,
            facts.tier,
            facts.input_tokens,
            facts.output_tokens,
        )
        assert (call.occurred_at, call.catalog_version) == (
            facts.occurred_at.replace(tzinfo=None),
            facts.catalog_version,
        )
        assert call.payload_digest is not None
        assert charging.same_payload(call.payload_digest, facts.payload_digest)
        assert (orphan_call.user_id, orphan_call.credits) == (None, orphan_used)
    finally:
        await engine.dispose()

    await migrate.downgrade_async(url, "0002")
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as connection:
            bare = set(
                await connection.scalars(text('SELECT "idempotencyKey" FROM "CreditTransaction"'))
            )
    finally:
        await engine.dispose()
    assert bare == {"cs_old", "ch_old:refunded:100", "ticket-1", None, owned_charge.event_id}


VERSION_TABLES = (
    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'"
)


async def test_the_version_table_lives_outside_prismas_schema(migrated_database: str) -> None:
    assert await _scalars(migrated_database, VERSION_TABLES) == ["metering"]
    head = migrate.head_revision()
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == [head]


async def test_upgrade_moves_a_version_table_from_public(migrated_database: str) -> None:
    # A database migrated while the version table lived in `public`.
    await _scalars(
        migrated_database,
        "ALTER TABLE metering.alembic_version SET SCHEMA public",
        "DROP SCHEMA metering",
    )
    await migrate.upgrade_async(migrated_database)
    assert await _scalars(migrated_database, VERSION_TABLES) == ["metering"]
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == [migrate.head_revision()]
    await migrate.downgrade_async(migrated_database, "0001")
    assert await _scalars(
        migrated_database, "SELECT version_num FROM metering.alembic_version"
    ) == ["0001"]


async def test_upgrade_refuses_two_version_tables(migrated_database: str) -> None:
    await _scalars(
        migrated_database,
        "CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO public.alembic_version VALUES ('0001')",
    )
    with pytest.raises(PermanentError, match=r"both public\.alembic_version and metering"):
        await migrate.upgrade_async(migrated_database)
    assert sorted(await _scalars(migrated_database, VERSION_TABLES)) == ["metering", "public"]
