"""The HTTP API against its own OpenAPI document: schemathesis, in-process, a bounded run.

Requests generated from `/openapi.json`, valid and invalid, go to the ASGI app on the real
database and Redis. Every answer must not be a 5xx, must have a status the document lists for its
route, and must match the schema the document gives for that status (errors included); invalid
requests must be refused with a 4xx. Some valid requests name a user or experiment that exists,
and some estimates price real models with tokens and calls up to their bounds, so that 200
answers and the estimate's arithmetic are exercised too.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from metering.ops.db import session_scope
from metering.ops.settings import Settings
from metering.pricing import get_catalog
from metering.pricing.estimate import MAX_CALLS
from metering.usage.event import MAX_TOKENS
from metering.web import create_app
from tests.factories import create_experiment, create_user
from tests.usage_data import charge_events, event
from tests.web.helpers import API_TOKEN, Queue, Sessions

EXAMPLES = 40
"""Examples per operation: the whole run stays well under a minute on a shared machine."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    negative_data_rejection,
]
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass(frozen=True)
class Known:
    user_id: str
    experiment_id: str


@pytest.fixture
async def known(sessions: Sessions) -> Known:
    """A user with a balance and usage, and an experiment of theirs with charged usage."""
    async with session_scope(sessions) as session:
        user_id = await create_user(session, 1_000_000)
        experiment_id = await create_experiment(session, user_id)
        await charge_events(session, [event(experiment_id, n) for n in range(3)])
    return Known(user_id, experiment_id)


OPERATIONS = [
    "GET /users/{user_id}/balance",
    "GET /users/{user_id}/transactions",
    "GET /users/{user_id}/usage",
    "POST /users/{user_id}/grants",
    "GET /experiments/{experiment_id}/usage",
    "POST /experiments/{experiment_id}/estimate",
    "GET /healthz",
]


def priced_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Estimates of models the catalog prices, with tokens and calls anywhere up to their bounds:
    from a few credits to far beyond what `estimatedCredits` holds."""
    models = [(m.provider_id, m.model.id) for m in get_catalog().models()]
    tokens = st.one_of(st.integers(0, 10_000), st.integers(0, MAX_TOKENS))
    item = st.builds(
        lambda model, calls, fresh, output, cached, written, tier: {
            "provider": model[0],
            "model": model[1],
            "calls": calls,
            "input_tokens": fresh,
            "output_tokens": output,
            "cached_input_tokens": cached,
            "cache_write_tokens": written,
            "reasoning_tokens": output // 2,
            "tier": tier,
        },
        st.sampled_from(models),
        st.one_of(st.integers(0, 1_000), st.integers(0, MAX_CALLS)),
        tokens,
        tokens,
        tokens,
        tokens,
        st.sampled_from(["standard", "batch"]),
    )
    return st.fixed_dictionaries({"items": st.lists(item, min_size=1, max_size=3)})


@pytest.fixture
def api_schema(settings: Settings, queue: Queue) -> Iterator[BaseSchema]:
    """The read API and /healthz as the app documents them; the app's lifespan is ended after."""
    app = create_app(settings, enqueue=queue)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app).include(
            path_regex=r"^/(users|experiments|healthz)"
        )
    finally:
        asgi.shutdown_lifespans()


def test_the_run_covers_every_operation(api_schema: BaseSchema) -> None:
    labels = [result.ok().label for result in api_schema.get_all_operations()]
    assert sorted(labels) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_answer_is_documented_and_no_input_makes_a_5xx(
    api_schema: BaseSchema, known: Known, label: str
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None
    ids = {"user_id": known.user_id, "experiment_id": known.experiment_id}
    existing = {p.name: ids[p.name] for p in operation.path_parameters if p.name in ids}
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=existing),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    if operation.body:
        strategies.append(
            priced_bodies().flatmap(
                lambda body: operation.as_strategy(
                    GenerationMode.POSITIVE, path_parameters=existing, body=body
                )
            )
        )
    cases = st.one_of(strategies)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def answers_as_documented(case: Case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    answers_as_documented()
