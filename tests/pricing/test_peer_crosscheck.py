"""The shipped catalog against genai-prices, an independently maintained price list.

Every disagreement must be listed, with its reason, in peer_exceptions.toml; a new one fails, and
so does a listed one that no longer happens, so that the file stays true.
"""

import warnings
from collections.abc import Iterator

import pytest

from metering.pricing import get_catalog
from tests.pricing.peer_cases import Case, agree, cases, load_exceptions


@pytest.fixture(scope="module")
def compared() -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genai-prices warns about price keys it cannot apply
        return list(cases(get_catalog()))


def disagreements(compared: list[Case]) -> Iterator[Case]:
    return (case for case in compared if not agree(case))


def test_every_shared_model_is_compared_on_the_whole_grid(compared: list[Case]) -> None:
    providers = {case.provider for case in compared}
    assert providers >= {"openai", "anthropic", "google", "xai", "deepseek", "mistral"}
    assert providers >= {"groq", "together", "fireworks", "bedrock"}
    assert len({(case.provider, case.model) for case in compared}) >= 500
    assert {case.tier for case in compared} >= {"standard", "batch", "flex"}


def test_every_disagreement_is_a_reviewed_exception(compared: list[Case]) -> None:
    exceptions = load_exceptions()
    unexplained = [
        f"{case.provider}/{case.model} {case.tier} {case.mix} at {case.at.isoformat()}: "
        f"ours {case.ours}, genai-prices {case.theirs}"
        for case in disagreements(compared)
        if not any(exception.covers(case) for exception in exceptions)
    ]
    assert unexplained == []


def test_every_listed_exception_still_disagrees(compared: list[Case]) -> None:
    found = list(disagreements(compared))
    stale = [
        f"{exception.provider} {exception.models}: {exception.reason[:60]}"
        for exception in load_exceptions()
        if not any(exception.covers(case) for case in found)
    ]
    assert stale == []
