"""Fixtures of the pricing tests: a catalog written to a temporary file."""

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_catalog(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "catalog.toml"
        path.write_text(text)
        return path

    return write
