"""`metering prices import`: genai-prices' data to catalog entries, never a silent price change."""

import hashlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import metering.cli.pricing  # noqa: F401  (registers the commands)
from metering.cli.app import app
from metering.ops.settings import get_settings
from metering.pricing import PricingError, TokenUsage, UnsupportedTier, get_catalog
from metering.pricing.catalog import Catalog, Layer, load_with_overlays
from metering.pricing.peer_import import convert, load_peer_data

runner = CliRunner()
TODAY = date(2026, 12, 1)
AT = datetime(2026, 12, 2, 12, tzinfo=UTC)


def model(model_id: str, prices: Any, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "match": {"equals": model_id}, "prices": prices, **extra}


PEER: list[dict[str, Any]] = [
    {
        "id": "groq",
        "name": "Groq",
        "api_pattern": "https://api\\.groq\\.com",
        "pricing_urls": ["https://groq.com/pricing"],
        "models": [
            model(
                "llama-9-70b",
                {"input_mtok": "0.59", "output_mtok": "0.79", "input_audio_mtok": "3"},
                match={"or": [{"equals": "llama-9-70b"}, {"equals": "llama-9-70b-versatile"}]},
                price_variants=[
                    {
                        "when": {"processing": "batch"},
                        "prices": {"input_mtok": "0.295", "output_mtok": "0.395"},
                    },
                    {"when": {"service_tier": "flex"}, "prices": {"input_mtok": "0.2"}},
                    {"when": {"speed": "fast"}, "prices": {"input_mtok": "9"}},
                ],
            ),
            model("old-model", {"input_mtok": "1", "output_mtok": "1"}, deprecated=True),
            model("whisper-9", {"audio_hours": "0.1"}),
            model("embed-9", {"input_mtok": "0.02"}),
            model("voice-9", {"input_mtok": "1", "output_audio_mtok": "20"}),
        ],
    },
    {
        "id": "google",
        "name": "Google",
        "api_pattern": "",
        "pricing_urls": ["https://ai.google.dev/gemini-api/docs/pricing"],
        "models": [
            model(
                "gemini-9-pro",
                [
                    {
                        "prices": {
                            "input_mtok": {"base": "2", "tiers": [{"start": 200000, "price": "4"}]},
                            "cache_read_mtok": {
                                "base": "0.2",
                                "tiers": [{"start": 200000, "price": "0.4"}],
                            },
                            "output_mtok": {
                                "base": "12",
                                "tiers": [{"start": 200000, "price": "18"}],
                            },
                        }
                    },
                    {
                        "constraint": {"start_date": "2026-11-01"},
                        "prices": {
                            "input_mtok": {"base": "1", "tiers": [{"start": 200000, "price": "2"}]},
                            "output_mtok": {
                                "base": "6",
                                "tiers": [{"start": 200000, "price": "9"}],
                            },
                        },
                    },
                ],
                price_variants=[
                    {
                        "when": {"processing": "batch"},
                        "prices": {
                            "input_mtok": {
                                "base": "0.5",
                                "tiers": [{"start": 200000, "price": "1"}],
                            },
                            "output_mtok": {
                                "base": "3",
                                "tiers": [{"start": 200000, "price": "4.5"}],
                            },
                        },
                        "constraint": {"start_date": "2026-10-14"},
                    },
                    {
                        "when": {"service_tier": "priority"},
                        "prices": {"input_mtok": "9"},
                        "constraint": {"start_date": "2027-01-01"},
                    },
                ],
            ),
        ],
    },
    {
        "id": "deepseek",
        "name": "Deepseek",
        "api_pattern": "",
        "pricing_urls": ["https://api-docs.deepseek.com/quick_start/pricing"],
        "models": [
            model(
                "deepseek-nova",
                [
                    {"prices": {"input_mtok": "0.1", "output_mtok": "0.4"}},
                    {
                        "constraint": {"start_time": "01:00:00Z", "end_time": "04:00:00Z"},
                        "prices": {"input_mtok": "0.2", "output_mtok": "0.8"},
                    },
                ],
            )
        ],
    },
    {"id": "cohere", "name": "Cohere", "api_pattern": "", "models": [model("x", {})]},
]


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("METERING_PRICE_CATALOG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def peer_file(tmp_path: Path, data: Any = PEER) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    return path


def entries() -> dict[str, dict[str, Any]]:
    conversion = convert(PEER, TODAY)
    return {item.entry["id"]: item.entry for item in conversion.converted}


def test_prices_become_periods_long_context_windows_and_tiers() -> None:
    found = entries()
    llama = found["llama-9-70b"]
    assert llama["aliases"] == ["llama-9-70b-versatile"]
    assert (llama["source"], llama["checked"]) == ("https://groq.com/pricing", "2026-12-01")
    assert llama["prices"] == [{"from": "2023-01-01T00:00:00Z", "input": "0.59", "output": "0.79"}]
    # batch halves both classes; flex (0.2 / 0.59) is no exact multiplier and `speed` no tier the
    # catalog knows: both stay refused.
    assert llama["tiers"] == {"batch": "0.5"}
    gemini = found["gemini-9-pro"]
    first, cut = gemini["prices"]
    assert first["long_context"] == {
        "above_prompt_tokens": 200000,
        "input": "4",
        "cached_input": "0.4",
        "output": "18",
    }
    assert cut["from"] == "2026-11-01T00:00:00Z"
    assert gemini["tiers"] == {"batch": "0.5"}  # the priority prices start later: not kept
    nova = found["deepseek-nova"]
    assert nova["prices"][0]["time_of_day"] == [
        {"start": "01:00:00", "end": "04:00:00", "input": "0.2", "output": "0.8"}
    ]


def test_what_cannot_be_held_is_left_out_with_its_reason() -> None:
    skipped = {item.model: item.reason for item in convert(PEER, TODAY).skipped}
    assert entries()["embed-9"]["prices"][0]["output"] == "0"
    assert skipped == {
        "voice-9": "output priced in units other than text tokens",
        "old-model": "deprecated",
        "whisper-9": "no price for text input tokens",
    }
    notes = {item.entry["id"]: item.notes for item in convert(PEER, TODAY).converted}
    assert "flex tier left out: no exact ratio between 0.59 and 0.2" in notes["llama-9-70b"]
    assert "input_audio_mtok not priced" in notes["llama-9-70b"]
    assert "priority prices from 2027-01-01 not kept" in notes["gemini-9-pro"]


def test_import_shows_the_difference_and_writes_a_file_for_review(tmp_path: Path) -> None:
    shipped = resources.files("metering.pricing")
    before = {
        name: hashlib.sha256(shipped.joinpath(name).read_bytes()).hexdigest()
        for name in ("catalog.toml", "catalog-imported.json")
    }
    output = tmp_path / "review.toml"
    result = runner.invoke(
        app, ["prices", "import", "--from", str(peer_file(tmp_path)), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "llama-9-70b" in result.output
    assert "new" in result.output
    assert "3 left out" in result.output
    text = output.read_text()
    assert text.startswith("# Catalog entries converted from genai-prices data on")
    catalog = load_with_overlays([output])
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert catalog.price_call("groq", "llama-9-70b-versatile", usage, AT).usd == Decimal("1.38")
    assert catalog.price_call("groq", "llama-9-70b", usage, AT, "batch").usd == Decimal("0.69")
    with pytest.raises(UnsupportedTier):
        catalog.price_call("groq", "llama-9-70b", usage, AT, "flex")
    night = catalog.price_call(
        "deepseek", "deepseek-nova", usage, datetime(2026, 12, 2, 2, tzinfo=UTC)
    )
    assert night.usd == Decimal("1.0")
    after = {
        name: hashlib.sha256(shipped.joinpath(name).read_bytes()).hexdigest() for name in before
    }
    assert after == before


def test_a_changed_price_is_shown_and_written_only_when_asked(tmp_path: Path) -> None:
    changed = [
        {
            "id": "openai",
            "name": "OpenAI",
            "api_pattern": "",
            "pricing_urls": ["https://developers.openai.com/api/docs/pricing"],
            "models": [
                model(
                    "gpt-4.1",
                    {"input_mtok": "1.5", "cache_read_mtok": "0.5", "output_mtok": "8"},
                    match={"or": [{"equals": "gpt-4.1"}, {"equals": "gpt-4.1-2025-04-14"}]},
                )
            ],
        }
    ]
    source = peer_file(tmp_path, changed)
    output = tmp_path / "review.toml"
    result = runner.invoke(
        app, ["prices", "import", "--from", str(source), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "input 2.00 -> 1.5" in result.output
    assert "gpt-4.1" not in output.read_text()
    result = runner.invoke(
        app,
        ["prices", "import", "--from", str(source), "--output", str(output), "--with-changes"],
    )
    assert result.exit_code == 0, result.output
    text = output.read_text()
    assert "# CHANGES the shipped entry: input 2.00 -> 1.5" in text
    catalog = load_with_overlays([output])
    cost = catalog.price_call("openai", "gpt-4.1-2025-04-14", TokenUsage(1_000_000, 0), AT)
    assert cost.usd == Decimal("1.5")


def test_json_output_is_the_packaged_imported_layer(tmp_path: Path) -> None:
    output = tmp_path / "imported.json"
    result = runner.invoke(
        app, ["prices", "import", "--from", str(peer_file(tmp_path)), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    catalog = Catalog([Layer(str(output), output.read_bytes(), "imported")])
    assert {resolved.model.id for resolved in catalog.models()} == {
        "llama-9-70b",
        "embed-9",
        "gemini-9-pro",
        "deepseek-nova",
    }


def test_missing_data_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["prices", "import", "--from", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "cannot read genai-prices data" in result.output
    not_a_list = peer_file(tmp_path, {"providers": []})
    result = runner.invoke(app, ["prices", "import", "--from", str(not_a_list)])
    assert "must be a JSON list of providers" in result.output
    monkeypatch.setitem(sys.modules, "genai_prices.data", None)
    result = runner.invoke(app, ["prices", "import", "--output", str(tmp_path / "x.toml")])
    assert result.exit_code == 2
    assert "genai-prices data not found" in result.output.replace("\n", " ")
    assert not (tmp_path / "x.toml").exists()


def test_the_shipped_catalog_covers_every_current_model_of_the_peer() -> None:
    conversion = convert(load_peer_data(None), TODAY)
    catalog = get_catalog()
    missing = []
    for item in conversion.converted:
        try:
            catalog.resolve(item.provider, item.entry["id"])
        except PricingError:
            missing.append(f"{item.provider}/{item.entry['id']}")
    assert missing == []
    assert len(conversion.converted) >= 500


def test_every_packaged_model_is_valid() -> None:
    models = list(get_catalog().models())  # validates each imported model, as first use does
    assert len(models) >= 540
    assert all(model.model.source.startswith("https://") for model in models)
