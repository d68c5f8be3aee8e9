"""Operators' catalog files (`METERING_PRICE_CATALOG`) are laid over the shipped catalog."""

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from metering.pricing import CatalogError, TokenUsage, UnknownModel, UnsupportedTier, get_catalog
from metering.pricing.catalog import load_with_overlays, overlay_paths

AT = datetime(2026, 12, 2, 12, tzinfo=UTC)
MILLION = TokenUsage(input_tokens=1_000_000, output_tokens=0)
NEW_MODEL = """
[providers.openai]

[[providers.openai.models]]
id = "gpt-7-preview"
aliases = ["gpt-7-preview-2026-12-01"]
source = "https://developers.openai.com/api/docs/pricing"
checked = 2026-12-01
[[providers.openai.models.prices]]
from = 2026-12-01T00:00:00Z
input = "3.00"
output = "12.00"
"""
OVERRIDE = """
[providers.openai]

[[providers.openai.models]]
id = "gpt-4o"
source = "https://example.com/our-contract"
checked = 2026-12-01
tiers = {}
[[providers.openai.models.prices]]
from = 2024-05-13T00:00:00Z
input = "2.00"
output = "8.00"
"""
NEW_PROVIDER = """
updated = 2026-12-01

[providers.acme-cloud]
name = "Acme Cloud"
aliases = ["acme"]
tiers = { batch = { every = "0.5", cached_input = "1" } }

[[providers.acme-cloud.models]]
id = "acme-large"
source = "https://acme.example/pricing"
checked = 2026-12-01
[[providers.acme-cloud.models.prices]]
from = 2026-01-01
input = "1"
cached_input = "0.10"
output = "2"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_new_model_is_added_and_the_shipped_ones_stay(tmp_path: Path) -> None:
    catalog = load_with_overlays([write(tmp_path, "new.toml", NEW_MODEL)])
    assert catalog.price_call("openai", "gpt-7-preview-2026-12-01", MILLION, AT).usd == 3
    shipped = get_catalog()
    assert (
        catalog.price_call("openai", "gpt-4o", MILLION, AT).usd
        == shipped.price_call("openai", "gpt-4o", MILLION, AT).usd
    )
    assert sum(1 for _ in catalog.models()) == sum(1 for _ in shipped.models()) + 1
    assert catalog.version != shipped.version


def test_a_model_of_the_same_id_replaces_the_shipped_one_whole(tmp_path: Path) -> None:
    catalog = load_with_overlays([write(tmp_path, "override.toml", OVERRIDE)])
    assert catalog.price_call("openai", "gpt-4o", MILLION, AT).usd == Decimal("2.00")
    # Its aliases and tiers are the operator's now: the shipped snapshot names are gone.
    with pytest.raises(UnknownModel, match="unknown model 'gpt-4o-2024-08-06'"):
        catalog.price_call("openai", "gpt-4o-2024-08-06", MILLION, AT)
    with pytest.raises(UnsupportedTier, match="no 'batch' tier"):
        catalog.price_call("openai", "gpt-4o", MILLION, AT, "batch")


def test_several_files_apply_in_order_joined_by_the_path_separator(tmp_path: Path) -> None:
    first = write(tmp_path, "a.toml", NEW_MODEL)
    second = write(tmp_path, "b.toml", NEW_MODEL.replace('input = "3.00"', 'input = "4.00"'))
    third = write(tmp_path, "c.toml", NEW_PROVIDER)
    setting = Path(os.pathsep.join(map(str, (first, second, third))))
    assert overlay_paths(setting) == [first, second, third]
    catalog = get_catalog(setting)
    assert catalog.price_call("openai", "gpt-7-preview", MILLION, AT).usd == Decimal("4.00")
    cached = TokenUsage(input_tokens=0, output_tokens=0, cached_input_tokens=1_000_000)
    assert catalog.price_call("acme", "acme-large", cached, AT, "batch").usd == Decimal("0.10")
    assert catalog.price_call("acme-cloud", "acme-large", MILLION, AT, "batch").usd == Decimal(
        "0.5"
    )


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (NEW_MODEL.replace('input = "3.00"', "input = 3.0"), 11, "input"),
        (NEW_MODEL.replace('source = "https://', 'source = "http://'), 7, "source"),
        (
            NEW_MODEL.replace("from = 2026-12-01T00:00:00Z", "from = 2026-12-01T00:00:00"),
            10,
            "from",
        ),
        (NEW_PROVIDER.replace('every = "0.5"', 'every = "0"'), 7, "tiers"),
    ],
)
def test_a_bad_operator_file_names_the_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str
) -> None:
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(CatalogError) as error:
        load_with_overlays([write(tmp_path, "good.toml", NEW_MODEL), path])
    message = str(error.value)
    assert message.startswith(f"{path}: invalid price catalog")
    assert f"line {line}," in message
    assert f"field providers.{'acme-cloud' if 'acme' in text else 'openai'}." in message
    assert field in message


def test_a_name_taken_by_another_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    text = NEW_MODEL.replace('aliases = ["gpt-7-preview-2026-12-01"]', 'aliases = ["gpt-4o-mini"]')
    path = write(tmp_path, "clash.toml", text)
    with pytest.raises(CatalogError, match=f"{path}: providers.openai: 'gpt-4o-mini' of model"):
        load_with_overlays([path])


def test_a_new_provider_needs_a_name_and_a_provider_spelling_is_not_shared(
    tmp_path: Path,
) -> None:
    nameless = write(tmp_path, "nameless.toml", NEW_PROVIDER.replace('name = "Acme Cloud"\n', ""))
    with pytest.raises(CatalogError, match="acme-cloud: a provider the catalog does not ship"):
        load_with_overlays([nameless])
    stolen = write(tmp_path, "stolen.toml", NEW_PROVIDER.replace('["acme"]', '["gemini"]'))
    with pytest.raises(CatalogError, match="'gemini' already names provider 'google'"):
        load_with_overlays([stolen])


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(CatalogError, match=f"{missing}: cannot read"):
        load_with_overlays([missing])
    broken = write(tmp_path, "broken.toml", "[providers.openai\n")
    with pytest.raises(CatalogError, match=rf"{broken}: not valid TOML: .*line 1"):
        load_with_overlays([broken])
