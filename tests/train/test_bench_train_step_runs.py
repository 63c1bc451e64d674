"""``bench/train_step.py --tiny`` runs end to end and ends with its one-line JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_train_step_tiny_runs():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "train_step.py"), "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["bench"] == "train_step" and record["config"] == "tiny" and record["batch"] == 16
    for key in ("forward_ms", "train_step_ms", "step_over_forward", "train_step_first_call_s"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
    assert abs(record["step_over_forward"] - record["train_step_ms"] / record["forward_ms"]) < 0.05
