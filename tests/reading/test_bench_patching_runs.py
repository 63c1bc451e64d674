"""bench/patching.py --tiny runs end to end, cross-checks the three patching methods and reports
its JSON line."""

import importlib.util

import pytest

from tests.benches import run_tiny

KEYS = (
    "ours_exact_s", "ours_attribution_s", "forward_s", "attribution_forward_equivalents",
    "nnsight_s", "nnsight_extrapolated", "nnsight_timed_patches", "hooks_s", "speedup_vs_nnsight",
    "speedup_vs_hooks", "matmul_peak_gflops", "flop_floor_gflop", "flop_floor_s",
    "exact_over_flop_floor", "bootstrap_s", "bootstrap_single_estimate_s",
    "bootstrap_over_single_estimate", "max_abs_diff_vs_ours", "load_average_start",
)


@pytest.mark.slow  # a subprocess run of a bench script (~10-20 s): `make test-slow`
@pytest.mark.skipif(importlib.util.find_spec("nnsight") is None, reason="nnsight not installed")
def test_bench_patching_tiny():
    res, stdout = run_tiny("patching")
    assert res["bench"] == "patching" and res["tiny"] is True
    for key in KEYS:
        assert key in res, key
    assert res["patches"] == res["layers"] * res["positions"]
    assert res["nnsight_extrapolated"] is True and "EXTRAPOLATED" in stdout
    for key in ("ours_exact_s", "ours_attribution_s", "nnsight_s", "hooks_s", "bootstrap_s"):
        assert res[key] > 0, key
    # Same weights everywhere: the three methods agree on every effect they computed.
    if res["same_weights"]:
        for method, diff in res["max_abs_diff_vs_ours"].items():
            assert diff < 1e-4, (method, diff)
