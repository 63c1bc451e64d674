"""``bench/forward.py --tiny`` runs end to end and ends with its one-line JSON record."""

import pytest

from tests.benches import run_tiny

KEYS = {
    "bench", "device", "batch", "ours_img_per_s", "torch_img_per_s", "ratio", "matmul_peak_gflops",
    "ours_gflops", "fraction_of_peak", "jax", "torch", "date",
}


@pytest.mark.slow  # a subprocess run of a bench script (~11 s): `make test-slow`
def test_bench_forward_tiny_runs():
    record, _ = run_tiny("forward", timeout=120)
    assert KEYS <= set(record), KEYS - set(record)
    assert record["bench"] == "forward" and record["tiny"] is True and record["batch"] == 4
    for key in ("ours_img_per_s", "torch_img_per_s", "ratio", "matmul_peak_gflops", "ours_gflops",
                "fraction_of_peak"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
