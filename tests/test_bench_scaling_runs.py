"""``bench/scaling.py --tiny`` runs end to end on 1 and 2 virtual devices and ends with its JSON."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow
def test_bench_scaling_tiny_runs():
    """Slow (two worker processes, ~40 s on 2 cores): ``make test-slow``."""
    record, _ = run_tiny("scaling", timeout=300)
    assert record["bench"] == "scaling" and [r["devices"] for r in record["rows"]] == [1, 2]
    two = record["rows"][1]
    assert two["sweep_max_abs_diff"] <= 1e-5 and two["loss_abs_diff"] <= 1e-6
    assert two["train_bytes_per_device"] < record["rows"][0]["train_bytes_per_device"]
    # Params sharded by the rule tables: the model axis divides them (the replicated rest is small).
    for name in ("clip_tiny", "blip2_tiny"):
        row = record["params"]["bench"][name]
        assert row["params_ratio_model8"] < 0.2
        assert set(row["forward_bytes"]) == {"8x1", "4x2", "2x4", "1x8", "8x1_fsdp"}
        projected = record["params"]["projected_bf16"][name]
        assert projected["1x8"] < 0.2 * projected["1x1"]
