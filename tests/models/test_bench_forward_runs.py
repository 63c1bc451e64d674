"""``bench/forward.py --tiny`` runs end to end and ends with its one-line JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = {
    "bench", "device", "batch", "ours_img_per_s", "torch_img_per_s", "ratio", "matmul_peak_gflops",
    "ours_gflops", "fraction_of_peak", "jax", "torch", "date",
}


def test_bench_forward_tiny_runs():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "forward.py"), "--tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert KEYS <= set(record), KEYS - set(record)
    assert record["bench"] == "forward" and record["tiny"] is True and record["batch"] == 4
    for key in ("ours_img_per_s", "torch_img_per_s", "ratio", "matmul_peak_gflops", "ours_gflops",
                "fraction_of_peak"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
