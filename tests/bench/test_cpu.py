"""CPU accounting of the benchmark: reaped children count, groups add up."""

import subprocess
import sys
import time

import psutil

from metering.bench import cpu

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_a_tree_keeps_the_time_of_children_that_exited() -> None:
    me = psutil.Process()
    before = cpu.tree_seconds(me)
    own_before = cpu.this_process()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    assert cpu.tree_seconds(me) - before >= 0.25  # counted in clock ticks
    assert cpu.this_process() - own_before < 0.2  # the child is not this process's own time


def test_the_servers_are_found_and_figures_add_up() -> None:
    assert cpu.postgres() > 0
    assert cpu.redis() > 0
    before = cpu.Reading(10.0, {"a": 1.0, "b": 2.0})
    after = cpu.Reading(12.0, {"a": 2.5, "b": 2.5})
    figures = cpu.figures(before, after, 1000)
    assert figures["seconds"] == {"a": 1.5, "b": 0.5, "total": 2.0}
    assert figures["us_per_event"] == {"a": 1500.0, "b": 500.0, "total": 2000.0}
    assert figures["cores_busy"] == 1.0


def test_reading_calls_every_meter() -> None:
    reading = cpu.read({"one": lambda: 1.5, "clock": time.monotonic}, 3.0)
    assert reading.wall_s == 3.0
    assert reading.seconds["one"] == 1.5
