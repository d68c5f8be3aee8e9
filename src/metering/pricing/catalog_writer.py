"""Catalog entries (plain data in the catalog's shape) written out as a catalog file.

TOML for an operator's file or for review (`METERING_PRICE_CATALOG` takes it as it is), JSON for
the packaged imported layer. Both load back to the same entries.
"""

import json
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from metering.pricing.peer_import import PROVIDERS, Difference


def grouped(
    differences: Sequence[Difference], names: Mapping[str, str], with_changes: bool
) -> dict[str, dict[str, Any]]:
    """The entries to write, per provider: new models, and changed ones when `with_changes`.

    `names` gives the display name of each provider the catalog already has; a provider new to it
    takes its peer name's stand-in (the id, title-cased) and the aliases in `PROVIDERS`.
    """
    providers: dict[str, dict[str, Any]] = {}
    aliases = {ours: extra for ours, extra in PROVIDERS.values()}
    for difference in differences:
        if difference.status == "same" or (difference.status == "differs" and not with_changes):
            continue
        provider = difference.converted.provider
        if provider not in providers:
            known = provider in names
            providers[provider] = {
                "name": names.get(provider, _display_name(provider)),
                "aliases": [] if known else list(aliases.get(provider, ())),
                "models": [],
                "notes": {},
            }
        entry = difference.converted.entry
        providers[provider]["models"].append(entry)
        note = [*difference.converted.notes]
        if difference.status == "differs":
            note.insert(0, f"CHANGES the shipped entry: {difference.detail}")
        providers[provider]["notes"][entry["id"]] = note
    return providers


def _display_name(provider: str) -> str:
    return {"bedrock": "AWS Bedrock", "groq": "Groq", "fireworks": "Fireworks AI"}.get(
        provider, provider.title()
    )


def to_json(providers: Mapping[str, Mapping[str, Any]], updated: date) -> str:
    """The packaged imported layer: one JSON document, one model per line for readable diffs."""
    lines = ["{", f'"updated": "{updated.isoformat()}",', '"providers": {']
    for number, (provider_id, provider) in enumerate(providers.items()):
        head = {key: provider[key] for key in ("name", "aliases")}
        lines.append(f'{json.dumps(provider_id)}: {json.dumps(head)[:-1]}, "models": [')
        models = provider["models"]
        for index, model in enumerate(models):
            comma = "," if index + 1 < len(models) else ""
            lines.append(json.dumps(model, separators=(",", ":")) + comma)
        lines.append("]}" + ("," if number + 1 < len(providers) else ""))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def to_toml(providers: Mapping[str, Mapping[str, Any]], updated: date, header: str) -> str:
    """An operator's catalog file (the overlay format) with a comment per entry."""
    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    out += ["", f"updated = {updated.isoformat()}"]
    for provider_id, provider in providers.items():
        table = f"providers.{_key(provider_id)}"
        out += ["", "", f"[{table}]", f"name = {_string(provider['name'])}"]
        if provider["aliases"]:
            out.append(f"aliases = {_array(provider['aliases'])}")
        for model in provider["models"]:
            out += ["", f"[[{table}.models]]"]
            out += [f"# {note}" for note in provider["notes"].get(model["id"], [])]
            out.append(f"id = {_string(model['id'])}")
            if model["aliases"]:
                out.append(f"aliases = {_array(model['aliases'])}")
            out.append(f"source = {_string(model['source'])}")
            out.append(f"checked = {model['checked']}")
            out.append(f"tiers = {_inline(model['tiers'])}")
            for period in model["prices"]:
                out.append(f"[[{table}.models.prices]]")
                out.append(f"from = {period['from']}")
                out += _rates(period)
                if "long_context" in period:
                    out.append(f"[{table}.models.prices.long_context]")
                    long = period["long_context"]
                    out.append(f"above_prompt_tokens = {long['above_prompt_tokens']}")
                    out += _rates(long)
                for window in period.get("time_of_day", []):
                    out.append(f"[[{table}.models.prices.time_of_day]]")
                    out += [f"start = {window['start']}", f"end = {window['end']}"]
                    if "days" in window:
                        out.append(f"days = {_array(window['days'])}")
                    out += _rates(window)
    return "\n".join(out) + "\n"


def _rates(table: Mapping[str, Any]) -> list[str]:
    names = ("input", "cached_input", "cache_write", "output", "reasoning")
    return [f"{name} = {_string(table[name])}" for name in names if name in table]


def _inline(value: Mapping[str, Any]) -> str:
    parts = [
        f"{_key(key)} = {_inline(item) if isinstance(item, Mapping) else _string(item)}"
        for key, item in value.items()
    ]
    return "{ " + ", ".join(parts) + " }" if parts else "{}"


def _array(items: Sequence[str]) -> str:
    return "[" + ", ".join(_string(item) for item in items) + "]"


def _string(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=False)


def _key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum()
    return name if bare and name.isascii() else _string(name)
