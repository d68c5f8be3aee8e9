"""Settings: the shared DATABASE_URL in Prisma's spelling, and money that is never a float."""

from decimal import Decimal

import pytest
from pydantic import ValidationError

from metering.ops.ids import cuid, cuids
from metering.ops.settings import Settings, to_asyncpg_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app:secret@db:5432/platform?schema=public",
            "postgresql+asyncpg://app:secret@db:5432/platform",
        ),
        ("postgres://db/platform", "postgresql+asyncpg://db/platform"),
        (
            "postgresql+asyncpg://db/platform?ssl=require",
            "postgresql+asyncpg://db/platform?ssl=require",
        ),
    ],
)
def test_prisma_urls_become_asyncpg_urls(url: str, expected: str) -> None:
    assert to_asyncpg_url(url) == expected


def test_a_non_postgres_url_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        to_asyncpg_url("mysql://db/platform")


def test_money_settings_refuse_floats_and_keep_decimals() -> None:
    assert Settings(metering_markup="1.15").metering_markup == Decimal("1.15")
    with pytest.raises(ValidationError, match="not a float"):
        Settings(metering_markup=1.15)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_HALT_THRESHOLD", "-50")
    monkeypatch.setenv("METERING_USAGE_SHARDS", "4")
    settings = Settings()
    assert settings.metering_halt_threshold == -50
    assert settings.metering_usage_shards == 4
    assert settings.broker_url == settings.redis_url


def test_cuids_look_like_prismas_and_do_not_collide() -> None:
    ids = {cuid() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 25 and i.startswith("c") and i.isalnum() and i.islower() for i in ids)


def test_cuids_made_in_batches_look_like_prismas_and_do_not_collide() -> None:
    batches = [cuids(500) for _ in range(20)] + [[cuid() for _ in range(500)]]
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 10_500
    assert all(len(i) == 25 and i.startswith("c") and i.isalnum() and i.islower() for i in ids)
    assert cuids(0) == []
