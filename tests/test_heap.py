"""The garbage collector's settings for server processes (gateway/heap.py)."""

import gc
import json
import subprocess
import sys

from gateway import heap

PROBE = """
import gc, json
import gateway.app  # what a gateway process loads before it serves
from gateway import heap
before = gc.get_freeze_count()
heap.settle()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}))
"""


def test_settle_freezes_what_was_loaded_and_spaces_out_young_collections():
    # In a process of its own: freezing is process-wide and would outlive this test.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    probe = json.loads(out.stdout)
    assert probe["before"] == 0
    # Everything loaded so far (gateway, trio, asyncpg, msgspec, ...) is out of the scans.
    assert probe["frozen"] > 20_000
    assert probe["threshold"][0] == heap.YOUNG_THRESHOLD
    assert probe["threshold"][1:] == list(gc.get_threshold()[1:])
