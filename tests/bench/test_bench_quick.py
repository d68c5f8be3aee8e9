"""The quick benchmark runs end to end and charges every event exactly once (speed is not tested),
and its exactly-once check does catch an event charged twice or not at all."""

import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering import ledger
from metering.bench import ceiling, environment, verify, workload
from metering.db import session_scope
from tests.conftest import REDIS_URL
from tests.factories import SERVER_URL
from tests.pipeline.helpers import Sessions

PHASES = ("ceiling", "pipeline", "pipeline_half_rate", "naive")


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """`metering bench --quick --json`, run as an operator would (on the test server)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from metering.cli import main; main()",
            "bench",
            "--quick",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "DATABASE_URL": SERVER_URL, "REDIS_URL": REDIS_URL},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.mark.slow
def test_every_event_is_charged_exactly_once_in_every_phase(figures: dict[str, Any]) -> None:
    checks = figures["exactly_once"]
    assert checks["dead_letters"] == 0
    for phase in PHASES:
        assert checks[phase]["problems"] == [], phase
        assert checks[phase]["rows"] == checks[phase]["expected_rows"] > 0, phase
        assert checks[phase]["credits"] > 0, phase
    assert set(figures["ratios"]) == {"pipeline_over_ceiling", "pipeline_over_naive"}
    assert set(figures["pipeline_half_rate"]["latency"]) == {"p50_s", "p95_s", "p99_s", "max_s"}


@pytest.mark.slow
async def test_the_run_leaves_no_database_and_no_keys(
    figures: dict[str, Any], sessions: Sessions
) -> None:
    async with sessions() as session:
        names = await session.scalars(text("SELECT datname FROM pg_database"))
        assert figures["database"] not in set(names)
    client = Redis.from_url(REDIS_URL)
    try:
        assert list(client.scan_iter(match=f"{figures['redis_prefix']}*")) == []
    finally:
        client.close()


async def _charge(session: AsyncSession, charges: list[ledger.UsageCharge]) -> None:
    await ledger.charge_usage(session, charges)


async def test_the_check_finds_a_missing_and_a_doubled_charge(sessions: Sessions) -> None:
    people = workload.population(f"t{uuid.uuid4().hex[:8]}", users=3, experiments=5, seed=1)
    charges = ceiling.price(workload.workload(people, 40, seed=1), Decimal(1), Decimal(0))
    expected = verify.Expected().add(charges)
    async with session_scope(sessions) as session:
        await environment.seed(session, people)
        await _charge(session, charges[:-1])
    async with sessions() as session:
        missing = await verify.check(session, people, expected)
    assert not missing.ok
    assert f"{charges[-1].experiment_id}: " in missing.problems[0]

    async with session_scope(sessions) as session:
        await _charge(session, charges[-1:])
        doubled = replace(charges[0], event_id=f"{charges[0].event_id}-again")
        await _charge(session, [doubled])
    async with sessions() as session:
        result = await verify.check(session, people, expected)
    assert any(p.startswith(f"{charges[0].experiment_id}: ") for p in result.problems)
    assert result.rows == len(charges) + 1
