"""The read API and /healthz, in-process over httpx's ASGI transport."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from metering.ledger import journal
from metering.ops.db import session_scope
from metering.ops.models import CreditTransaction, MAACExperiment, TransactionType
from metering.ops.settings import Settings
from metering.web import create_app
from tests.factories import create_experiment, create_user, unique
from tests.usage_data import charge_events, event
from tests.web.helpers import API_TOKEN, Queue, Sessions, serve

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def post(sessions: Sessions, user_id: str, type_: TransactionType, amount: int) -> None:
    async with session_scope(sessions) as session:
        await journal.post(session, journal.Posting(user_id, type_, amount, "web", unique("key")))


async def new_user(sessions: Sessions, credits: int) -> str:
    async with session_scope(sessions) as session:
        return await create_user(session, credits)


async def walk(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query, headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        cursor = body["next_cursor"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/users/u/balance"),
        ("GET", "/users/u/transactions"),
        ("GET", "/users/u/usage"),
        ("GET", "/experiments/e/usage"),
        ("POST", "/experiments/e/estimate"),
    ],
)
async def test_every_read_endpoint_wants_the_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_TOKEN}):
        response = await client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_balance_and_unknown_user(client: httpx.AsyncClient, sessions: Sessions) -> None:
    user_id = await new_user(sessions, 2_500)
    response = await client.get(f"/users/{user_id}/balance", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user_id
    assert (body["credits"], body["usd"], body["email"]) == (
        2_500,
        "2.500",
        f"{user_id}@example.com",
    )
    assert datetime.fromisoformat(body["updated_at"]).tzinfo is not None

    missing = await client.get("/users/nobody/balance", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_pagination_walks_every_row_once_with_inserts_between_pages(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    user_id = await new_user(sessions, 100)
    for amount in range(1, 8):
        await post(sessions, user_id, TransactionType.ADJUSTMENT, -amount)
    async with session_scope(sessions) as session:
        existing = list(
            await session.scalars(
                select(CreditTransaction.id)
                .where(CreditTransaction.user_id == user_id)
                .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc())
            )
        )

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        response = await client.get(f"/users/{user_id}/transactions", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        await post(sessions, user_id, TransactionType.PURCHASE, 5)
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]

    assert seen == existing
    assert len(await walk(client, f"/users/{user_id}/transactions", limit=500)) == 8 + 3


async def test_transactions_filter_by_type_and_time(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    user_id = await new_user(sessions, 100)
    await post(sessions, user_id, TransactionType.REFUND, 3)
    await post(sessions, user_id, TransactionType.ADJUSTMENT, -4)
    path = f"/users/{user_id}/transactions"
    everything = await walk(client, path)
    assert [i["type"] for i in everything] == ["ADJUSTMENT", "REFUND", "PURCHASE"]
    assert [i["amount"] for i in everything] == [-4, 3, 100]

    refunds = await walk(client, path, type="REFUND")
    assert [i["id"] for i in refunds] == [everything[1]["id"]]
    two = await client.get(path, params=[("type", "REFUND"), ("type", "PURCHASE")], headers=AUTH)
    assert [i["type"] for i in two.json()["items"]] == ["REFUND", "PURCHASE"]

    refund_at = everything[1]["created_at"]
    assert [i["id"] for i in await walk(client, path, since=refund_at)] == [
        everything[0]["id"],
        everything[1]["id"],
    ]
    assert [i["id"] for i in await walk(client, path, until=refund_at)] == [everything[2]["id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await walk(client, path, since=future) == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"type": "GIFT"},
        {"since": "yesterday"},
        {"cursor": "garbage"},
    ],
)
async def test_bad_transaction_queries_are_422(
    client: httpx.AsyncClient, sessions: Sessions, params: dict[str, Any]
) -> None:
    user_id = await new_user(sessions, 1)
    response = await client.get(f"/users/{user_id}/transactions", params=params, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in {"invalid_request", "invalid_cursor"}


async def test_experiment_usage_breakdown_sums_equal_the_ledger(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
    docs = [event(experiment_id, n, cached_input_tokens=n) for n in range(12)]
    for start in (0, 5):
        async with session_scope(sessions) as session:
            await charge_events(session, docs[start : start + 7 if start == 0 else None])

    response = await client.get(f"/experiments/{experiment_id}/usage", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    async with session_scope(sessions) as session:
        charged = -(
            await session.scalar(
                select(func.sum(CreditTransaction.amount)).where(
                    CreditTransaction.experiment_id == experiment_id
                )
            )
            or 0
        )
        experiment = await session.get(MAACExperiment, experiment_id)
    assert experiment is not None

    groups = body["by_model"]
    assert [g["key"] for g in groups] == [
        "anthropic/claude-sonnet-4",
        "google/gemini-2.5-flash",
        "openai/gpt-4o-mini",
    ]
    assert sum(g["calls"] for g in groups) == body["total"]["calls"] == 12
    assert sum(g["credits"] for g in groups) == body["total"]["credits"] == charged
    assert body["credits_used"] == experiment.credits_used == charged > 0
    assert body["exact_credits_used"] == body["total"]["exact_credits"]
    assert body["total"]["cached_input_tokens"] == sum(range(12))
    assert sum(g["input_tokens"] for g in groups) == sum(d["input_tokens"] for d in docs)
    assert body["estimated_credits"] is None

    missing = await client.get("/experiments/nope/usage", headers=AUTH)
    assert missing.status_code == 404


async def test_user_usage_grouped_by_day_and_provider(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
        await charge_events(session, [event(experiment_id, n) for n in range(4)])
    path = f"/users/{user_id}/usage"
    by_day = (await client.get(path, params={"by": "day"}, headers=AUTH)).json()
    (day,) = by_day["groups"]
    assert day["key"] == day["day"] == datetime.now(UTC).date().isoformat()
    by_provider = (await client.get(path, params={"by": "provider"}, headers=AUTH)).json()
    assert [g["calls"] for g in by_provider["groups"]] == [1, 1, 2]
    assert by_provider["total"]["credits"] == day["credits"] > 0
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = (await client.get(path, params={"since": future}, headers=AUTH)).json()
    assert (later["groups"], later["total"]["calls"]) == ([], 0)
    bad = await client.get(path, params={"by": "week"}, headers=AUTH)
    assert bad.status_code == 422


async def test_estimate_is_stored_and_says_whether_the_balance_covers_it(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000)
        experiment_id = await create_experiment(session, user_id)
    path = f"/experiments/{experiment_id}/estimate"
    item = {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 2_000}
    at = "2025-09-01T00:00:00Z"

    small = await client.post(path, json={"items": [item | {"calls": 100}], "at": at}, headers=AUTH)
    assert small.status_code == 200, small.text
    # 100 calls x 2,000 tokens x $0.15 per million = $0.03 = 30 credits.
    assert small.json() == {
        "experiment_id": experiment_id,
        "api_key_mode": "system",
        "estimated_credits": 30,
        "user_id": user_id,
        "balance": 1_000,
        "covered": True,
        "shortfall": 0,
    }
    large = await client.post(path, json={"items": [item | {"calls": 10_000}]}, headers=AUTH)
    assert large.status_code == 200, large.text
    assert (large.json()["estimated_credits"], large.json()["covered"]) == (3_000, False)
    assert large.json()["shortfall"] == 2_000

    usage = (await client.get(f"/experiments/{experiment_id}/usage", headers=AUTH)).json()
    assert (usage["estimated_credits"], usage["estimate_delta"]) == (3_000, -3_000)


@pytest.mark.parametrize(
    "body",
    [
        {"items": []},
        {"items": [{"provider": "openai", "model": "gpt-4o-mini", "calls": -1}]},
        {"items": [{"provider": "openai", "model": "gpt-4o-mini", "calls": "9"}]},
        {"items": [{"provider": "openai", "model": "gpt-0", "calls": 1}]},
        {"items": [{"provider": "openai", "model": "gpt-4o-mini", "calls": 1}], "at": "2025-01-01"},
    ],
)
async def test_bad_estimates_are_422_and_store_nothing(
    client: httpx.AsyncClient, sessions: Sessions, body: dict[str, Any]
) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
    response = await client.post(f"/experiments/{experiment_id}/estimate", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        assert experiment.estimated_credits is None


async def test_estimate_of_an_unknown_experiment_is_404(client: httpx.AsyncClient) -> None:
    body = {"items": [{"provider": "openai", "model": "gpt-4o-mini", "calls": 1}]}
    response = await client.post("/experiments/nope/estimate", json=body, headers=AUTH)
    assert response.status_code == 404


async def test_healthz_needs_no_token_and_reports_each_component(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["unavailable"] == []
    assert {name: c["status"] for name, c in body["components"].items()} == {
        "database": "ok",
        "redis": "ok",
        "broker": "ok",
    }


@pytest.fixture
async def client_without_redis(
    settings: Settings, queue: Queue, unused_port: int
) -> AsyncIterator[httpx.AsyncClient]:
    dead = f"redis://127.0.0.1:{unused_port}/0"
    broken = settings.model_copy(update={"redis_url": dead, "celery_broker_url": None})
    async for client in serve(create_app(broken, enqueue=queue)):
        yield client


async def test_healthz_is_503_naming_what_is_unreachable(
    client_without_redis: httpx.AsyncClient,
) -> None:
    response = await client_without_redis.get("/healthz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["unavailable"] == ["redis", "broker"]
    assert body["components"]["database"]["status"] == "ok"
    assert "Connect" in body["components"]["redis"]["error"]


async def test_openapi_documents_the_read_api(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in (
        "/users/{user_id}/balance",
        "/users/{user_id}/transactions",
        "/experiments/{experiment_id}/usage",
        "/experiments/{experiment_id}/estimate",
        "/healthz",
    ):
        assert path in schema["paths"]
    balance = schema["components"]["schemas"]["BalanceResponse"]
    assert {"user_id", "credits", "email", "updated_at"} <= set(balance["properties"])
    assert (await client.get("/docs")).status_code == 200


async def test_a_database_out_of_reach_answers_503_in_the_error_shape(
    settings: Settings, queue: Queue
) -> None:
    unreachable = settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/nowhere"}
    )
    async for client in serve(create_app(unreachable, enqueue=queue)):
        for path in ("/users/u1/balance", "/experiments/e1/usage"):
            response = await client.get(path, headers=AUTH)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "database_unavailable"
