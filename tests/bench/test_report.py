"""The report's memory figure over a drain and its verdict."""

from metering.bench.pipeline import RssSample
from metering.bench.report import MIB, drain_memory, verdicts


def _samples(totals_mib: list[float]) -> list[RssSample]:
    return [
        RssSample(
            at_s=float(n),
            total_bytes=int(t * MIB),
            largest_child_bytes=int(t * MIB / 3),
            processes=3,
        )
        for n, t in enumerate(totals_mib)
    ]


def test_growth_is_measured_from_the_tenth_of_the_drain_to_its_end() -> None:
    summary = drain_memory(_samples([100, 300, 310, 320, 400, 330]), tenth_s=2.0)
    assert summary["start"]["total_mib"] == 100
    assert summary["peak_total_mib"] == 400
    assert summary["at_10_percent"]["total_mib"] == 310
    assert summary["end"]["total_mib"] == 330
    assert summary["growth_mib"] == 20
    assert summary["growth_percent"] == round(100 * 20 / 310, 1)


def _memory_verdict(totals_mib: list[float]) -> bool:
    figures = {"backlog": {"memory": drain_memory(_samples(totals_mib), tenth_s=1.0)}}
    met: bool = verdicts(figures)["worker_memory_growth"]["met"]
    return met


def test_memory_is_flat_when_it_grows_by_less_than_20_mib_or_10_percent() -> None:
    assert _memory_verdict([50, 300, 319])
    assert _memory_verdict([50, 1000, 1090])
    assert not _memory_verdict([50, 300, 340])
