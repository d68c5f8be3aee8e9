"""The `metering` command as an operator runs it: a real process against a real database."""

import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from metering.ops import redis_keys
from metering.ops.db import create_engine, make_sessionmaker, session_scope
from tests.factories import drop_database, server_database_url
from tests.support import METERING, REDIS_URL, metering
from tests.usage_data import charge_events, event


@pytest.fixture
def new_database_url() -> Iterator[str]:
    """The URL of a database that does not exist yet; dropped afterwards."""
    url = server_database_url(f"metering_cli_{uuid.uuid4().hex[:10]}")
    yield url
    drop_database(url)


def seeded(url: str) -> str:
    """Migrate the database at `url` and seed it; the seed user's id."""
    assert metering("db", "upgrade", database_url=url).returncode == 0
    return str(json.loads(metering("seed", "--json", database_url=url).stdout)["user_id"])


async def execute(url: str, statement: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def test_operator_session_from_creation_to_reconcile(new_database_url: str) -> None:
    url = new_database_url
    created = metering("db", "upgrade", database_url=url)
    assert created.returncode == 0, created.stderr
    assert "created database" in created.stdout

    for _ in range(2):
        seeded = metering("seed", "--json", database_url=url)
        assert seeded.returncode == 0, seeded.stderr
    assert json.loads(seeded.stdout)["created"] is False

    shown = metering("balance", "test@example.com", "--json", database_url=url)
    balance = json.loads(shown.stdout)
    assert balance["credits"] == 10_000
    assert balance["email"] == "test@example.com"

    adjusted = metering(
        "adjust",
        "test@example.com",
        "--credits",
        "-250",
        "--reason",
        "goodwill",
        "--key",
        "k1",
        "--operator",
        "alice",
        database_url=url,
    )
    assert adjusted.returncode == 0, adjusted.stderr
    again = metering(
        "adjust",
        "test@example.com",
        "--credits",
        "-250",
        "--reason",
        "goodwill",
        "--key",
        "k1",
        "--operator",
        "alice",
        database_url=url,
    )
    assert "nothing changed" in again.stdout

    user_id = balance["user_id"]
    await execute(
        url,
        'INSERT INTO "MAACExperiment" (id, name, "userId", "updatedAt") '
        f"VALUES ('exp-cli', 'cli', '{user_id}', now())",
    )
    refunded = metering(
        "refund",
        "exp-cli",
        "--credits",
        "40",
        "--reason",
        "provider outage",
        "--key",
        "T-7",
        "--json",
        database_url=url,
        operator="bob",
    )
    assert json.loads(refunded.stdout)["type"] == "REFUND"
    final = json.loads(metering("balance", user_id, "--json", database_url=url).stdout)
    assert final["credits"] == 10_000 - 250 + 40

    clean = metering("reconcile", database_url=url)
    assert clean.returncode == 0, clean.stderr

    await execute(url, 'UPDATE "User" SET credits = credits + 1')
    broken = metering("reconcile", database_url=url)
    assert broken.returncode == 1
    assert f"user {user_id}: credits = 9791 but its transactions sum to 9790" in broken.stderr


POSTED_BY = ("--reason", "x", "--key", "k", "--operator", "alice")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("adjust", "test@example.com", "--credits", "0", *POSTED_BY), "must be not 0"),
        (("balance", "nobody@example.com"), "no user with id or email 'nobody@example.com'"),
        (("refund", "no-such-experiment", "--credits", "5", *POSTED_BY), "no experiment"),
    ],
)
def test_bad_requests_get_one_line_errors(
    database_url: str, args: tuple[str, ...], message: str
) -> None:
    result = metering(*args, database_url=database_url)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unmigrated_database_is_a_one_line_error(empty_database: str) -> None:
    result = metering("reconcile", database_url=empty_database)
    assert result.returncode == 2
    assert "run `metering db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_a_one_line_error() -> None:
    result = metering("seed", database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 2
    assert "cannot reach PostgreSQL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_an_operators_posting_moves_the_halt_flags_with_the_balance(
    new_database_url: str,
) -> None:
    """An adjustment that takes the balance to the halt threshold halts the user's running
    experiment; a top-up above it lifts the halt, as a purchase would."""
    url = new_database_url
    user_id = seeded(url)
    await execute(
        url,
        'INSERT INTO "MAACExperiment" (id, name, "userId", status, "updatedAt") '
        f"VALUES ('exp-run', 'run', '{user_id}', 'running', now())",
    )
    flag = redis_keys.halt_flag(os.environ["METERING_REDIS_PREFIX"], "exp-run")
    redis = Redis.from_url(REDIS_URL)
    try:
        drained = ("adjust", user_id, "--credits", "-10000", "--reason", "x", "--key", "H-1")
        assert metering(*drained, database_url=url, operator="alice").returncode == 0
        assert await redis.exists(flag) == 1
        topped = ("adjust", user_id, "--credits", "500", "--reason", "x", "--key", "H-2")
        assert metering(*topped, database_url=url, operator="alice").returncode == 0
        assert await redis.exists(flag) == 0
    finally:
        await redis.delete(
            flag, redis_keys.halted_experiments(os.environ["METERING_REDIS_PREFIX"], user_id)
        )
        await redis.aclose()
    assert metering("reconcile", database_url=url).returncode == 0


def test_an_operators_posting_is_reported_even_when_redis_is_out_of_reach(
    new_database_url: str,
) -> None:
    url = new_database_url
    user_id = seeded(url)
    args = ("adjust", user_id, "--credits", "7", "--reason", "x", "--key", "R-1", "--json")
    result = subprocess.run(
        [METERING, *args],
        env={
            "DATABASE_URL": url,
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "METERING_OPERATOR": "alice",
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created"] is True
    assert "posted, but the halt flags were not synced" in result.stderr
    assert "Traceback" not in result.stderr
    balance = json.loads(metering("balance", user_id, "--json", database_url=url).stdout)
    assert balance["credits"] == 10_007


async def test_operator_postings_are_once_per_key_and_say_who_made_them(
    new_database_url: str,
) -> None:
    """An operator runs the same adjustment and refund twice (the first reply was lost): each
    posts once. Each row names its operator (flag or METERING_OPERATOR). A posting without a key
    or an operator is refused; a key already used for another posting is refused (exit 1)."""
    url = new_database_url
    user_id = seeded(url)
    await execute(
        url,
        'INSERT INTO "MAACExperiment" (id, name, "userId", "updatedAt") '
        f"VALUES ('exp-ops', 'ops', '{user_id}', now())",
    )
    adjust = ("adjust", user_id, "--credits", "250", "--reason", "x", "--key", "T-1", "--json")
    refund = ("refund", "exp-ops", "--credits", "40", "--reason", "outage", "--key", "T-2")
    runs = [
        metering(*adjust, database_url=url, operator="alice"),
        metering(*adjust, database_url=url, operator="alice"),
        metering(*refund, "--operator", "bob", "--json", database_url=url),
        metering(*refund, "--operator", "bob", database_url=url),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert [json.loads(runs[i].stdout)["created"] for i in (0, 1, 2)] == [True, False, True]
    assert "nothing changed" in runs[3].stdout
    balance = json.loads(metering("balance", user_id, "--json", database_url=url).stdout)
    assert balance["credits"] == 10_000 + 250 + 40

    shown = json.loads(metering("transactions", user_id, "--json", database_url=url).stdout)
    audit = {row["type"]: row["metadata"] for row in shown["items"] if row["type"] != "PURCHASE"}
    assert audit["ADJUSTMENT"] == {"reason": "x", "operator": "alice"}
    assert audit["REFUND"] == {"experimentId": "exp-ops", "reason": "outage", "operator": "bob"}

    without_key = metering(*adjust[:-3], database_url=url, operator="alice")
    without_operator = metering(*adjust, database_url=url)
    assert (without_key.returncode, without_operator.returncode) == (2, 2)
    assert "Missing option '--key'" in without_key.stderr
    assert "Missing option '--operator'" in without_operator.stderr

    reused = metering(
        "adjust", user_id, "--credits", "-40", "--reason", "x", "--key", "T-2",
        database_url=url, operator="alice",
    )  # fmt: skip
    assert reused.returncode == 1
    assert "idempotency key 'operator:T-2' was already posted as REFUND of +40" in reused.stderr
    assert "Traceback" not in reused.stderr
    final = json.loads(metering("balance", user_id, "--json", database_url=url).stdout)
    assert final["credits"] == 10_000 + 250 + 40
    assert metering("reconcile", database_url=url).returncode == 0


async def test_reconcile_reports_a_deleted_owner_apart_from_violations(
    new_database_url: str,
) -> None:
    """After the platform deletes a user with charged usage, reconcile names the experiment as
    owner deleted and exits 0; a real violation beside it still exits 1."""
    url = new_database_url
    user_id = seeded(url)
    await execute(
        url,
        'INSERT INTO "MAACExperiment" (id, name, "userId", "updatedAt") '
        f"VALUES ('exp-gone', 'gone', '{user_id}', now())",
    )
    engine = create_engine(url, pool_size=1)
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            outcome, _ = await charge_events(session, [event("exp-gone", n) for n in range(4)])
    finally:
        await engine.dispose()
    used = -sum(outcome.amounts.values())
    await execute(url, f"DELETE FROM \"User\" WHERE id = '{user_id}'")

    clean = metering("reconcile", database_url=url)
    assert clean.returncode == 0, clean.stderr
    assert (
        f"owner deleted experiment exp-gone: 4 calls ({used:,} credits) were charged to user "
        f"{user_id}, deleted since with its transactions" in clean.stdout
    )
    as_json = json.loads(metering("reconcile", "--json", database_url=url).stdout)
    assert as_json["ok"] is True
    assert as_json["deletions"] == [
        {
            "kind": "owner_deleted",
            "experiment_id": "exp-gone",
            "user_id": user_id,
            "calls": 4,
            "credits": used,
        }
    ]

    await execute(url, 'UPDATE "MAACExperiment" SET "creditsUsed" = "creditsUsed" + 1')
    broken = metering("reconcile", database_url=url)
    assert broken.returncode == 1
    assert "owner deleted experiment exp-gone" in broken.stdout
    assert f"experiment exp-gone: creditsUsed = {used + 1} but its usage sums to {used}" in (
        broken.stderr
    )


# Every command that touches PostgreSQL or Redis, with arguments that get it that far.
TOKENS = ("--input-tokens", "1", "--output-tokens", "1")
DATABASE_COMMANDS = [
    ("seed",),
    ("reconcile",),
    ("balance", "test@example.com"),
    ("transactions", "test@example.com"),
    ("usage", "--user", "test@example.com"),
    ("refund", "exp-none", "--credits", "5", "--reason", "x", "--key", "k", "--operator", "o"),
    (
        "adjust",
        "test@example.com",
        "--credits",
        "5",
        "--reason",
        "x",
        "--key",
        "k",
        "--operator",
        "o",
    ),
    ("stripe", "events"),
    ("stripe", "replay", "evt_none"),
]
MIGRATING_COMMANDS = [("db", "upgrade"), ("db", "downgrade"), ("demo", "--seconds", "0.1")]
REDIS_COMMANDS = [
    ("status",),
    ("dlq", "list"),
    ("dlq", "replay"),
    ("emit", "--experiment", "e", "--provider", "openai", "--model", "gpt-4o-mini", *TOKENS),
    ("demo", "--seconds", "0.1"),
]
UNREACHABLE_DATABASE = "postgresql://postgres@127.0.0.1:1/nowhere"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def run_cli(args: tuple[str, ...], **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [METERING, *args],
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args", [*DATABASE_COMMANDS, *MIGRATING_COMMANDS])
def test_unreachable_database_is_one_line_for_every_command(args: tuple[str, ...]) -> None:
    result = run_cli(args, DATABASE_URL=UNREACHABLE_DATABASE, REDIS_URL=REDIS_URL)
    assert_one_line_error(result, "cannot reach PostgreSQL", "127.0.0.1:1", "DATABASE_URL")


@pytest.mark.parametrize("args", [*DATABASE_COMMANDS, *MIGRATING_COMMANDS])
def test_wrong_database_url_scheme_is_one_line_for_every_command(args: tuple[str, ...]) -> None:
    result = run_cli(args, DATABASE_URL="mysql://root@127.0.0.1/metering", REDIS_URL=REDIS_URL)
    assert_one_line_error(result, "DATABASE_URL", "postgresql://", "mysql://")


@pytest.mark.parametrize("args", [*DATABASE_COMMANDS, ("db", "downgrade")])
def test_unmigrated_database_is_one_line_for_every_command(
    empty_database: str, args: tuple[str, ...]
) -> None:
    result = run_cli(args, DATABASE_URL=empty_database, REDIS_URL=REDIS_URL)
    assert_one_line_error(result, "metering db upgrade")


@pytest.mark.parametrize("args", REDIS_COMMANDS)
def test_unreachable_redis_is_one_line_for_every_command(
    database_url: str, args: tuple[str, ...]
) -> None:
    result = run_cli(args, DATABASE_URL=database_url, REDIS_URL=UNREACHABLE_REDIS)
    assert_one_line_error(result, "cannot reach Redis", "127.0.0.1:1", "REDIS_URL")


# `stripe replay` reaches Redis only after processing a stored event; its settings come first.
@pytest.mark.parametrize("args", [*REDIS_COMMANDS, ("stripe", "replay", "evt_none")])
def test_wrong_redis_url_scheme_is_one_line_for_every_command(
    database_url: str, args: tuple[str, ...]
) -> None:
    result = run_cli(args, DATABASE_URL=database_url, REDIS_URL="http://127.0.0.1:6379/0")
    assert_one_line_error(result, "REDIS_URL", "redis://", "http://")
