"""``bench/sae.py --tiny`` runs end to end and ends with its JSON record: one step of our TopK SAE
and of the plain torch one from the same start give the same params, the radix-select variant gives
our params, our streamed site is transformers' ``hidden_states[layer + 1]``, and every rate
is positive and follows from the record's own figures."""

import math

import pytest

from tests.benches import run_tiny

KEYS = {
    "bench", "device", "dtype", "tiny", "d_in", "d_sae", "k", "batch", "lr", "aux_k", "iters",
    "ours_acts_per_s", "torch_acts_per_s", "ratio", "ratio_best", "ours_radix_acts_per_s", "ratio_radix",
    "step_gflop", "matmul_peak_gflops", "ours_gflops", "fraction_of_peak", "torch_fraction_of_peak",
    "radix_fraction_of_peak", "select_ms", "max_abs_diff", "variant_max_abs_diff", "loss_ours", "loss_torch",
    "compile_s", "e2e_site", "e2e_images", "ours_e2e_acts_per_s", "torch_e2e_acts_per_s", "ratio_e2e",
    "torch_trunc_e2e_acts_per_s", "ratio_e2e_trunc", "ours_radix_e2e_acts_per_s", "ratio_radix_e2e",
    "e2e_gflop_per_step", "e2e_fraction_of_peak", "site_max_abs_diff", "loadavg_1min", "jax", "torch", "date",
}

# The tiny sizes (bench/sae.py under --tiny): d_in 32 (the tiny tower's width), 256 latents, k 8,
# 64 rows a step; the tiny tower: 32 px, patch 8 (17 tokens an image), 8 layers, site layer 6.
D_IN, D_SAE, K, BATCH = 32, 256, 8, 64


@pytest.mark.slow  # a subprocess run of a bench script (~15 s on 2 cores): `make test-slow`
def test_bench_sae_tiny_runs():
    """Targets (ours at least 1.5x torch's activations/s at the full shape) are not asserted: the
    tiny SAE steps in about a millisecond, where per-call overhead decides the ratio."""
    record, stdout = run_tiny("sae", timeout=180)
    assert KEYS <= set(record), KEYS - set(record)
    assert record["bench"] == "sae" and record["tiny"] is True and record["dtype"] == "fp32"
    sizes = (record["d_in"], record["d_sae"], record["k"], record["batch"], record["aux_k"])
    assert sizes == (D_IN, D_SAE, K, BATCH, 0), sizes
    for key in ("ours_acts_per_s", "torch_acts_per_s", "ratio", "ratio_best", "ours_radix_acts_per_s",
                "ratio_radix", "ours_floor_acts_per_s", "ratio_floor", "matmul_peak_gflops", "ours_gflops",
                "fraction_of_peak", "torch_fraction_of_peak", "radix_fraction_of_peak", "ours_e2e_acts_per_s",
                "torch_e2e_acts_per_s", "ratio_e2e",
                "torch_trunc_e2e_acts_per_s", "ratio_e2e_trunc", "ours_radix_e2e_acts_per_s", "ratio_radix_e2e",
                "e2e_fraction_of_peak", "loss_ours", "loss_torch"):
        value = record[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert set(record["select_ms"]) == {"ours", "sort", "lax_top_k", "radix", "torch_topk"}
    assert all(math.isfinite(v) and v > 0 for v in record["select_ms"].values()), record["select_ms"]
    # The FLOP count: five dense GEMMs of 2 B d_in d_sae a step.
    assert record["step_gflop"] == round(10 * BATCH * D_IN * D_SAE / 1e9, 4)
    want = 10 * BATCH * D_IN * D_SAE / 1e9 * record["ours_acts_per_s"] / BATCH
    assert record["ours_gflops"] == pytest.approx(want, rel=0.01, abs=0.006), (record["ours_gflops"], want)
    assert record["ratio"] == pytest.approx(record["ours_acts_per_s"] / record["torch_acts_per_s"], rel=0.01)
    assert record["ratio_e2e"] == pytest.approx(record["ours_e2e_acts_per_s"] / record["torch_e2e_acts_per_s"],
                                                rel=0.01)
    # Like for like: one step from the same params on the same batch (fp32).
    assert record["loss_ours"] == pytest.approx(record["loss_torch"], rel=1e-5), stdout
    assert record["max_abs_diff"] <= 1e-5, stdout
    assert record["variant_max_abs_diff"] <= 1e-6, stdout  # the same mask (radix select is exact)
    # Our vision.layers.6.resid_post is transformers' hidden_states[7] (the parity tests' atol).
    assert record["e2e_site"] == "vision.layers.6.resid_post"
    assert record["e2e_images"] == 4  # ceil(64 / 17)
    assert record["site_max_abs_diff"] <= 1e-5, stdout
