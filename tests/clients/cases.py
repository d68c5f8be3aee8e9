"""The cases the Python and TypeScript producers share: `usage_cases.json` (provider usage
objects and their token counts, shard routing) and `event_cases.json` (events valid or not)."""

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
USAGE = json.loads((HERE / "usage_cases.json").read_text())
EVENTS = json.loads((HERE / "event_cases.json").read_text())


def event_document(case: dict[str, Any]) -> dict[str, Any]:
    """The document a case of `event_cases.json` describes (the TypeScript tests build it alike)."""
    document = {**EVENTS["base"], **case.get("changes", {})}
    for name in case.get("remove", []):
        del document[name]
    if "metadata_text" in case:
        document["metadata"] = {"k": case["metadata_text"]["char"] * case["metadata_text"]["count"]}
    if "metadata_keys" in case:
        document["metadata"] = {f"k{i}": i for i in range(case["metadata_keys"])}
    return document
