"""`metering grant` and the grants of `metering balance`, as an operator runs them."""

import json
from datetime import UTC, datetime, timedelta

from tests.grants.helpers import Sessions, credits_of, user_with_experiment
from tests.support import metering

EXPIRES_AT = (datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)).isoformat()


async def test_a_grant_posts_once_per_key_and_shows_in_the_balance(
    sessions: Sessions, database_url: str
) -> None:
    user_id, _ = await user_with_experiment(sessions, purchased=1_000)
    args = ("grant", user_id, "--credits", "300", "--expires-at", EXPIRES_AT, "--reason", "trial")
    key = ("--key", f"T-{user_id}")

    given = metering(*args, *key, "--priority", "2", "--json", database_url=database_url)
    assert given.returncode == 0, given.stderr
    grant = json.loads(given.stdout)
    assert (grant["credits"], grant["remaining"], grant["priority"]) == (300, 300, 2)
    assert (grant["source"], grant["created"]) == ("cli", True)
    assert grant["expires_at"] == EXPIRES_AT

    again = metering(*args, *key, "--priority", "2", database_url=database_url)
    assert again.returncode == 0, again.stderr
    assert f"already granted as grant {grant['grant_id']}" in again.stdout
    assert "nothing changed" in again.stdout

    conflict = metering(*args, *key, "--priority", "3", database_url=database_url)
    assert conflict.returncode == 1, conflict.stderr
    assert "idempotency_key_conflict" in conflict.stderr
    assert await credits_of(sessions, user_id) == 1_300

    shown = metering("balance", user_id, "--json", database_url=database_url)
    assert shown.returncode == 0, shown.stderr
    balance = json.loads(shown.stdout)
    assert balance["credits"] == 1_300
    assert [(g["grant_id"], g["remaining"], g["reason"]) for g in balance["grants"]] == [
        (grant["grant_id"], 300, "trial")
    ]
    table = metering("balance", user_id, database_url=database_url)
    assert grant["grant_id"] in table.stdout
    assert "trial" in table.stdout


async def test_a_grant_that_cannot_be_is_one_line_and_posts_nothing(
    sessions: Sessions, database_url: str
) -> None:
    user_id, _ = await user_with_experiment(sessions)
    common = ("--credits", "10", "--reason", "trial", "--key", f"T-{user_id}")
    for expires_at in ("2020-01-01T00:00:00Z", "next week"):
        refused = metering(
            "grant", user_id, *common, "--expires-at", expires_at, database_url=database_url
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error:")
        assert len(refused.stderr.strip().splitlines()) == 1
    assert await credits_of(sessions, user_id) == 0
