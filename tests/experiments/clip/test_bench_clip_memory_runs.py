"""``bench/clip_memory.py --tiny`` runs and its streamed stages hold memory flat at 10x data
(slow: two experiment runs in fresh processes, ~40 s; the figures at full size are in BUILD.md)."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow
def test_clip_memory_bench_tiny():
    record, _ = run_tiny("clip_memory", timeout=600)
    assert record["bench"] == "clip_memory" and record["n_10x"] == 10 * record["n_1x"]
    assert record["ratio"] <= record["target"] == 1.2 and record["pass"]
