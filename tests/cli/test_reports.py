"""`metering usage` and `metering transactions` as an operator runs them: real processes."""

import json
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from metering.ledger import journal
from metering.ops.db import session_scope
from metering.ops.models import TransactionType
from tests.factories import create_experiment, create_user, unique
from tests.support import metering
from tests.usage_data import charge_events, event

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def account(sessions: Sessions) -> dict[str, Any]:
    """A user with a purchase, two adjustments and usage on an experiment."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 100_000)
        experiment_id = await create_experiment(session, user_id)
        for amount in (-7, 9):
            await journal.post(
                session,
                journal.Posting(user_id, TransactionType.ADJUSTMENT, amount, "fix", unique("k")),
            )
        outcome, _ = await charge_events(session, [event(experiment_id, n) for n in range(6)])
    return {"user": user_id, "experiment": experiment_id, "charged": -sum(outcome.amounts.values())}


def run_json(database_url: str, *args: str) -> Any:
    result = metering(*args, "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_usage_of_an_experiment_and_a_user(database_url: str, account: dict[str, Any]) -> None:
    report = run_json(database_url, "usage", "--experiment", account["experiment"])
    assert report["scope"] == "experiment"
    assert [g["key"] for g in report["groups"]] == [
        "anthropic/claude-sonnet-4",
        "google/gemini-2.5-flash",
        "openai/gpt-4o-mini",
    ]
    assert report["total"]["calls"] == 6
    assert report["total"]["credits"] == account["charged"] > 0
    assert isinstance(report["total"]["exact_credits"], str)

    by_day = run_json(database_url, "usage", "--user", account["user"], "--by", "day")
    (day,) = by_day["groups"]
    assert day["credits"] == account["charged"]
    later = run_json(database_url, "usage", "--user", account["user"], "--since", "2999-01-01")
    assert (later["groups"], later["total"]["calls"]) == ([], 0)
    recent = run_json(database_url, "usage", "--user", account["user"], "--since", "1h")
    assert recent["total"]["calls"] == 6

    table = metering("usage", "--experiment", account["experiment"], database_url=database_url)
    assert table.returncode == 0, table.stderr
    assert "openai/gpt-4o-mini" in table.stdout
    assert f"{account['charged']:,}" in table.stdout.splitlines()[-2]


def test_usage_refuses_bad_arguments(database_url: str, account: dict[str, Any]) -> None:
    both = metering(
        "usage", "--user", account["user"], "--experiment", "e", database_url=database_url
    )
    assert both.returncode == 2
    assert "exactly one of --user or --experiment" in both.stderr
    unknown = metering("usage", "--experiment", "nope", database_url=database_url)
    assert unknown.returncode == 2
    assert "no experiment with id 'nope'" in unknown.stderr
    bad_time = metering(
        "usage", "--user", account["user"], "--since", "last week", database_url=database_url
    )
    assert bad_time.returncode == 2
    assert "--since 'last week'" in bad_time.stderr


def test_transactions_newest_first_with_filters(database_url: str, account: dict[str, Any]) -> None:
    every = run_json(database_url, "transactions", account["user"], "--limit", "100")
    assert every["user_id"] == account["user"]
    usage_rows = [i for i in every["items"] if i["type"] == "USAGE"]
    assert len(every["items"]) == len(usage_rows) + 2 + 1
    assert 1 <= len(usage_rows) <= 3  # six calls of three models in one batch: a row per model
    assert -sum(i["amount"] for i in usage_rows) == account["charged"]
    times = [item["created_at"] for item in every["items"]]
    assert times == sorted(times, reverse=True)

    two = run_json(database_url, "transactions", f"{account['user']}@example.com", "--limit", "2")
    assert [i["id"] for i in two["items"]] == [i["id"] for i in every["items"][:2]]
    adjustments = run_json(
        database_url, "transactions", account["user"], "--type", "ADJUSTMENT", "--type", "PURCHASE"
    )
    assert sorted(i["amount"] for i in adjustments["items"]) == [-7, 9, 100_000]

    table = metering("transactions", account["user"], database_url=database_url)
    assert table.returncode == 0, table.stderr
    assert "+100,000" in table.stdout
    assert "USAGE" in table.stdout
    missing = metering("transactions", "nobody", database_url=database_url)
    assert missing.returncode == 2
    assert "no user with id or email 'nobody'" in missing.stderr
