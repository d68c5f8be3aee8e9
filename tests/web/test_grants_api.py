"""`POST /users/{id}/grants` and the grants of `GET /users/{id}/balance`."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.grants.helpers import Sessions, credits_of, user_with_experiment
from tests.web.helpers import API_TOKEN

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def body(**change: Any) -> dict[str, Any]:
    expires_at = (datetime.now(UTC).replace(microsecond=0) + timedelta(days=14)).isoformat()
    return {"credits": 500, "expires_at": expires_at, "reason": "trial", "key": "T-1", **change}


async def test_a_grant_is_given_once_and_shown_with_the_balance(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=1_000)
    asked = body(key=f"trial-{user_id}", priority=2)

    given = await client.post(f"/users/{user_id}/grants", json=asked, headers=AUTH)
    assert given.status_code == 201, given.text
    grant = given.json()
    assert (grant["credits"], grant["remaining"], grant["priority"]) == (500, 500, 2)
    assert (grant["reason"], grant["source"], grant["created"]) == ("trial", "api", True)

    again = await client.post(f"/users/{user_id}/grants", json=asked, headers=AUTH)
    assert again.status_code == 200, again.text
    assert again.json() == {**grant, "created": False}
    assert await credits_of(sessions, user_id) == 1_500

    balance = (await client.get(f"/users/{user_id}/balance", headers=AUTH)).json()
    assert balance["credits"] == 1_500
    (shown,) = balance["grants"]
    assert shown["grant_id"] == grant["grant_id"]
    assert (shown["remaining"], shown["reason"]) == (500, "trial")
    assert datetime.fromisoformat(shown["expires_at"]) == datetime.fromisoformat(
        asked["expires_at"]
    )


@pytest.mark.parametrize("change", [{"credits": 501}, {"reason": "promotion"}, {"priority": 1}])
async def test_the_same_key_with_other_values_is_409(
    client: httpx.AsyncClient, sessions: Sessions, change: dict[str, Any]
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    asked = body(key=f"trial-{user_id}")
    assert (await client.post(f"/users/{user_id}/grants", json=asked, headers=AUTH)).is_success

    refused = await client.post(f"/users/{user_id}/grants", json={**asked, **change}, headers=AUTH)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "idempotency_key_conflict"
    assert await credits_of(sessions, user_id) == 500


@pytest.mark.parametrize(
    "change",
    [
        {"expires_at": "2020-01-01T00:00:00Z"},
        {"expires_at": "2030-01-01T00:00:00"},  # no offset: not RFC 3339
        {"credits": 0},
        {"credits": 1.0},
        {"credits": "5"},
        {"priority": 1001},
        {"reason": ""},
        {"reason": "   "},
        {"key": "a\u0000b"},
        {"operator": "someone"},
    ],
)
async def test_a_grant_out_of_bounds_is_422_and_gives_nothing(
    client: httpx.AsyncClient, sessions: Sessions, change: dict[str, Any]
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    refused = await client.post(f"/users/{user_id}/grants", json=body(**change), headers=AUTH)
    assert refused.status_code == 422, refused.text
    assert await credits_of(sessions, user_id) == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer forged"}, {"Authorization": API_TOKEN}],
    ids=["none", "forged", "not bearer"],
)
async def test_a_grant_without_the_token_changes_nothing(
    client: httpx.AsyncClient, sessions: Sessions, headers: dict[str, str]
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    refused = await client.post(f"/users/{user_id}/grants", json=body(), headers=headers)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "unauthorized"
    assert await credits_of(sessions, user_id) == 0
    balance = (await client.get(f"/users/{user_id}/balance", headers=AUTH)).json()
    assert balance["grants"] == []


async def test_a_grant_to_an_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    refused = await client.post("/users/nobody/grants", json=body(), headers=AUTH)
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "not_found"
