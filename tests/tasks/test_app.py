"""What a Celery worker child sets up when it starts, before any task."""

import json
import subprocess
import sys

from metering.tasks.runtime import YOUNG_COLLECTION_THRESHOLD

CHILD_START = """
import gc, json, os
from celery.signals import worker_process_init
from metering.tasks.app import app
from metering.tasks import runtime
before = gc.get_threshold()
worker_process_init.send(sender=None)
made = runtime._current is not None and runtime._current.pid == os.getpid()
print(json.dumps({"before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "runtime": made}))
"""


def test_a_worker_child_opens_its_runtime_and_tunes_the_garbage_collector() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD_START], capture_output=True, text=True, timeout=60, check=True
    )
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["runtime"] is True
    assert state["before"][0] != YOUNG_COLLECTION_THRESHOLD
    assert state["after"] == [YOUNG_COLLECTION_THRESHOLD, *state["before"][1:]]
    assert state["frozen"] > 10_000  # the modules and objects of start-up, out of collections
