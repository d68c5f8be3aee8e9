"""Hostile input to the read API: every refusal is a 4xx in the error shape, bounds and statuses
are in the OpenAPI document, and estimates within the bounds cannot overflow."""

import base64
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from metering.ops.db import session_scope
from metering.ops.models import MAACExperiment
from metering.ops.settings import Settings
from metering.pricing.estimate import MAX_CALLS
from metering.usage.event import MAX_TOKENS
from metering.web import create_app
from tests.factories import create_experiment, create_user
from tests.web.helpers import API_TOKEN, Queue, Sessions, serve

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ITEM = {"provider": "openai", "model": "gpt-4o-mini", "calls": 1}
ALL_TOKENS = {
    "input_tokens": MAX_TOKENS,
    "output_tokens": MAX_TOKENS,
    "cached_input_tokens": MAX_TOKENS,
    "cache_write_tokens": MAX_TOKENS,
    "reasoning_tokens": MAX_TOKENS,
}


def refused(response: httpx.Response, status: int, code: str) -> str:
    """The message of an error answer, after checking its status, shape and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize(
    "path",
    [
        "/users/%00/balance",
        "/users/a%00b/transactions",
        "/users/%0A/usage",
        f"/users/{'u' * 321}/balance",
        "/experiments/%00/usage",
        "/experiments/with%20space/usage",
        f"/experiments/{'e' * 129}/usage",
    ],
)
async def test_ids_out_of_bounds_are_422(client: httpx.AsyncClient, path: str) -> None:
    message = refused(await client.get(path, headers=AUTH), 422, "invalid_request")
    assert "path" in message


@pytest.mark.parametrize(
    "params",
    [
        {"since": "0001-01-01T00:00:00+01:00"},
        {"until": "9999-12-31T23:59:59-23:00"},
        {"since": "9999-12-31T23:30:00-01:00"},
    ],
)
async def test_times_beyond_utc_are_422(
    client: httpx.AsyncClient, sessions: Sessions, params: dict[str, str]
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1)
    for route in ("transactions", "usage"):
        if route == "usage" and "until" in params:
            continue
        response = await client.get(f"/users/{user_id}/{route}", params=params, headers=AUTH)
        assert "years 1 to 9999" in refused(response, 422, "invalid_request")


@pytest.mark.parametrize(
    "crafted",
    [
        ["0001-01-01T00:00:00+01:00", "id"],
        ["2025-01-01T00:00:00", "a\u0000b"],
        ["2025-01-01T00:00:00", "\ud800"],
    ],
)
async def test_crafted_cursors_are_422(
    client: httpx.AsyncClient, sessions: Sessions, crafted: list[str]
) -> None:
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1)
    cursor = base64.urlsafe_b64encode(json.dumps(crafted).encode()).decode().rstrip("=")
    response = await client.get(
        f"/users/{user_id}/transactions", params={"cursor": cursor}, headers=AUTH
    )
    refused(response, 422, "invalid_cursor")


@pytest.mark.parametrize(
    "body",
    [
        {"items": [ITEM | {"output_tokens": 10**14}]},
        {"items": [ITEM | {"calls": 10**30, "output_tokens": 1_000}]},
        {"items": [ITEM | {"calls": MAX_CALLS + 1}]},
        {"items": [ITEM | {"calls": MAX_CALLS // 2 + 1}] * 2},
        {"items": [ITEM | {"provider": "x" * 129}]},
        {"items": [ITEM | {"tier": "Batch!"}]},
        {"items": [ITEM], "at": "0001-01-01T00:00:00+05:00"},
    ],
)
async def test_estimates_out_of_bounds_are_422_and_store_nothing(
    client: httpx.AsyncClient, sessions: Sessions, body: dict[str, Any]
) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
    response = await client.post(f"/experiments/{experiment_id}/estimate", json=body, headers=AUTH)
    refused(response, 422, "invalid_request")
    async with session_scope(sessions) as session:
        experiment = await session.get(MAACExperiment, experiment_id)
        assert experiment is not None
        assert experiment.estimated_credits is None


async def test_the_largest_estimate_within_the_bounds_is_refused_not_a_crash(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    """Every token class at its bound, the most calls, the dearest model: a clear 422."""
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None)
    item = (
        ITEM | ALL_TOKENS | {"provider": "anthropic", "model": "claude-opus-4", "calls": MAX_CALLS}
    )
    response = await client.post(
        f"/experiments/{experiment_id}/estimate", json={"items": [item] * 1000}, headers=AUTH
    )
    # 1000 items of MAX_CALLS calls each are over the total, refused before pricing.
    refused(response, 422, "invalid_request")
    response = await client.post(
        f"/experiments/{experiment_id}/estimate", json={"items": [item]}, headers=AUTH
    )
    assert "does not fit estimatedCredits" in refused(response, 422, "invalid_usage")


@pytest.fixture(params=[10**4, 10**9], ids=["beyond-int32", "beyond-28-digits"])
async def expensive_client(
    request: pytest.FixtureRequest, settings: Settings, queue: Queue
) -> AsyncIterator[httpx.AsyncClient]:
    """A platform fee (USD per million) at which one call at the token bounds costs more than
    2^31 credits (4 * 10^9), or more than the default decimal context holds (4 * 10^14)."""
    dear = settings.model_copy(
        update={"metering_platform_fee_usd_per_million": Decimal(request.param)}
    )
    async for client in serve(create_app(dear, enqueue=queue)):
        yield client


async def test_a_call_dearer_than_one_event_can_be_charged_is_422(
    expensive_client: httpx.AsyncClient, sessions: Sessions
) -> None:
    async with session_scope(sessions) as session:
        experiment_id = await create_experiment(session, None, api_key_mode="own")
    response = await expensive_client.post(
        f"/experiments/{experiment_id}/estimate",
        json={"items": [ITEM | ALL_TOKENS]},
        headers=AUTH,
    )
    assert "more than one usage event can be charged" in refused(response, 422, "invalid_usage")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"not json", "application/json"), (b'{"items": [', "application/json")],
)
async def test_a_body_that_is_not_json_is_400(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/experiments/any/estimate",
        content=content,
        headers=AUTH | {"Content-Type": content_type},
    )
    refused(response, 400, "invalid_json")


async def test_routing_errors_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    refused(await client.get("/no/such/route", headers=AUTH), 404, "not_found")
    response = await client.delete("/experiments/e/estimate", headers=AUTH)
    refused(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


async def test_openapi_lists_every_status_and_bound(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    for path, method in (
        ("/users/{user_id}/balance", "get"),
        ("/users/{user_id}/transactions", "get"),
        ("/users/{user_id}/usage", "get"),
        ("/experiments/{experiment_id}/usage", "get"),
        ("/experiments/{experiment_id}/estimate", "post"),
    ):
        responses = paths[path][method]["responses"]
        expected = {"200", "401", "404", "422", "503"} | ({"400"} if method == "post" else set())
        assert set(responses) == expected, (path, set(responses))
        for status in expected - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
        (id_parameter,) = [p for p in paths[path][method]["parameters"] if p["in"] == "path"]
        assert {"maxLength", "minLength", "pattern"} <= set(id_parameter["schema"])

    item = document["components"]["schemas"]["EstimateItem"]["properties"]
    assert item["calls"]["maximum"] == MAX_CALLS
    for name in ALL_TOKENS:
        assert item[name]["maximum"] == MAX_TOKENS, name
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "HTTPValidationError" not in str(document["paths"])
