"""Each stored event knows its payment: set when stored, and filled in for events stored before."""

import json

from sqlalchemy import text

from metering.ops import migrate
from metering.ops.db import create_engine
from tests.stripe.deliveries import charge, checkout_session, event, new_id


async def test_upgrading_fills_in_the_payment_of_events_already_stored(empty_database: str) -> None:
    await migrate.upgrade_async(empty_database, "0002")
    pi = new_id("pi")
    expanded = checkout_session("user-1", 1_000)
    expanded["payment_intent"] = {"id": pi, "object": "payment_intent"}
    stored = {
        "evt_charge": event("charge.refunded", charge(pi, 1_000, 100)),
        "evt_session": event("checkout.session.completed", expanded),
        "evt_plan": event("plan.created", {"id": "plan_1", "object": "plan"}),
    }
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.begin() as connection:
            for event_id, payload in stored.items():
                await connection.execute(
                    text(
                        'INSERT INTO "StripeEvent" (id, type, livemode, payload) '
                        "VALUES (:id, :type, false, CAST(:payload AS jsonb))"
                    ),
                    {"id": event_id, "type": payload["type"], "payload": json.dumps(payload)},
                )
        await migrate.upgrade_async(empty_database)
        async with engine.connect() as connection:
            rows = await connection.execute(
                text('SELECT id, "paymentIntent" FROM "StripeEvent" ORDER BY id')
            )
            payments = {row.id: row.paymentIntent for row in rows}
    finally:
        await engine.dispose()

    assert payments == {"evt_charge": pi, "evt_plan": None, "evt_session": pi}
