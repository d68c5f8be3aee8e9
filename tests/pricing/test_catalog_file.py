"""Loading the catalog: a bad file fails at load naming the file, the entry and the reason."""

from collections.abc import Callable
from pathlib import Path

import pytest

from metering.errors import PermanentError
from metering.pricing import CatalogError, get_catalog, load_catalog
from tests.pricing.helpers import MINIMAL


def test_the_packaged_catalog_loads_and_is_cached() -> None:
    assert get_catalog() is get_catalog(None)
    assert get_catalog().version.startswith(get_catalog().updated.isoformat())


def test_a_file_catalog_is_cached_per_path(write_catalog: Callable[[str], Path]) -> None:
    path = write_catalog(MINIMAL)
    assert get_catalog(path) is get_catalog(path)
    assert get_catalog(path).path == path


def test_the_version_changes_with_the_contents(write_catalog: Callable[[str], Path]) -> None:
    first = load_catalog(write_catalog(MINIMAL)).version
    second = load_catalog(write_catalog(MINIMAL.replace('"4.00"', '"4.10"'))).version
    assert first != second
    assert first.startswith("2025-01-01+")


@pytest.mark.parametrize(
    ("change", "entry", "reason"),
    [
        (('input = "1.00"', "input = 1.0"), "models[0] (thinker-1)", "not float"),
        (('input = "1.00"', 'input = "-1"'), "models[0] (thinker-1)", "must be a finite decimal"),
        (('input = "1.00"', 'input = "cheap"'), "models[0] (thinker-1)", "not a decimal"),
        (('output = "4.00"\n', ""), "models[0] (thinker-1)", "prices.0.output"),
        (
            ("from = 2025-01-01T00:00:00Z", "from = 2025-01-01T00:00:00"),
            "models[0] (thinker-1)",
            "UTC offset",
        ),
        (('source = "https://', 'source = "http://'), "models[0] (thinker-1)", "source"),
        (('batch = "0.5"', 'batch = "0"'), "providers.acme", "multipliers > 0"),
        (('id = "thinker-1"', 'id = "thinker-1"\nprice = "1"'), "models[0]", "Extra inputs"),
    ],
)
def test_a_bad_entry_names_file_entry_and_reason(
    write_catalog: Callable[[str], Path], change: tuple[str, str], entry: str, reason: str
) -> None:
    old, new = change
    assert old in MINIMAL
    path = write_catalog(MINIMAL.replace(old, new, 1))
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    message = str(error.value)
    assert str(path) in message
    assert entry in message
    assert reason in message
    assert error.value.code == "invalid_catalog"
    assert isinstance(error.value, PermanentError)


SECOND_MODEL = """
[[providers.acme.models]]
id = "thinker-2"
aliases = ["{alias}"]
source = "https://example.com/pricing"
checked = 2025-01-01
[[providers.acme.models.prices]]
from = 2025-03-01T00:00:00Z
input = "1"
output = "2"
[[providers.acme.models.prices]]
from = {second}
input = "1"
output = "3"
"""


def test_an_alias_used_twice_is_refused(write_catalog: Callable[[str], Path]) -> None:
    text = MINIMAL + SECOND_MODEL.format(alias="THINKER-1", second="2025-04-01")
    with pytest.raises(CatalogError) as error:
        load_catalog(write_catalog(text))
    assert "providers.acme" in str(error.value)
    assert "'THINKER-1' of model 'thinker-2' is already 'thinker-1'" in str(error.value)


def test_effective_dates_must_increase(write_catalog: Callable[[str], Path]) -> None:
    text = MINIMAL + SECOND_MODEL.format(alias="t2", second="2025-02-01")
    with pytest.raises(CatalogError) as error:
        load_catalog(write_catalog(text))
    assert "models[1] (thinker-2)" in str(error.value)
    assert "effective dates must increase" in str(error.value)


def test_a_bare_date_means_midnight_utc(write_catalog: Callable[[str], Path]) -> None:
    text = MINIMAL + SECOND_MODEL.format(alias="t2", second="2025-04-01")
    catalog = load_catalog(write_catalog(text))
    model = catalog.resolve("acme", "t2").model
    assert model.prices[1].from_.isoformat() == "2025-04-01T00:00:00+00:00"


def test_invalid_toml_names_the_file(write_catalog: Callable[[str], Path]) -> None:
    path = write_catalog(MINIMAL + "\n[providers.acme\n")
    with pytest.raises(CatalogError, match="not valid TOML") as error:
        load_catalog(path)
    assert str(path) in str(error.value)


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(CatalogError, match="cannot read") as error:
        load_catalog(path)
    assert str(path) in str(error.value)
