"""Helpers for pricing tests: a small catalog written to a temporary file."""

from collections.abc import Callable
from pathlib import Path

import pytest

MINIMAL = """
updated = 2025-01-01

[providers.acme]
name = "Acme"
tiers = { batch = "0.5" }

[[providers.acme.models]]
id = "thinker-1"
aliases = ["thinker-1-2025-01-01"]
source = "https://example.com/pricing"
checked = 2025-01-01
[[providers.acme.models.prices]]
from = 2025-01-01T00:00:00Z
input = "1.00"
output = "4.00"
reasoning = "8.00"
"""


@pytest.fixture
def write_catalog(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "catalog.toml"
        path.write_text(text)
        return path

    return write
