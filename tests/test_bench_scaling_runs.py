"""``bench/scaling.py --tiny`` runs end to end on 1 and 2 virtual devices and ends with its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_scaling_tiny_runs():
    """Slow (two worker processes, ~40 s on 2 cores): ``make test-slow``."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scaling.py"), "--tiny"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["bench"] == "scaling" and [r["devices"] for r in record["rows"]] == [1, 2]
    two = record["rows"][1]
    assert two["sweep_max_abs_diff"] <= 1e-5 and two["loss_abs_diff"] <= 1e-6
    assert two["train_bytes_per_device"] < record["rows"][0]["train_bytes_per_device"]
