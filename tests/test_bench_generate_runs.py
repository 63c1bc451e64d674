"""``bench/generate.py --tiny`` runs end to end, ends with its JSON record, and both sides decode the
same greedy tokens in fp32, with and without the per-step edit."""

import pytest

from tests.benches import run_tiny

KEYS = {
    "bench", "device", "dtype", "shape", "batch", "new_tokens", "ours_tokens_per_s", "torch_tokens_per_s",
    "ratio", "ours_edit_tokens_per_s", "torch_edit_tokens_per_s", "ratio_edit", "ours_compile_s",
    "tokens_match", "tokens_match_edit", "edit_changed_tokens_share", "peak_rss_mb", "jax", "torch", "date",
}


@pytest.mark.slow  # a subprocess run of a bench script (~20 s on 2 cores): `make test-slow`
def test_bench_generate_tiny_runs():
    record, stdout = run_tiny("generate", timeout=180)
    assert KEYS <= set(record), KEYS - set(record)
    assert record["bench"] == "generate" and record["tiny"] is True and record["dtype"] == "fp32"
    assert record["batch"] == 2 and record["new_tokens"] == 8
    for key in ("ours_tokens_per_s", "torch_tokens_per_s", "ratio", "ours_edit_tokens_per_s",
                "torch_edit_tokens_per_s", "ratio_edit", "ours_compile_s", "peak_rss_mb"):
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])
    # The comparison means something only if the decode is not one repeated token and the edit acts.
    assert record["distinct_tokens"] > 2, stdout
    assert record["edit_changed_tokens_share"] > 0, stdout
    assert record["tokens_match"] is True and record["tokens_match_share"] == 1.0, stdout
    assert record["tokens_match_edit"] is True and record["tokens_match_share_edit"] == 1.0, stdout
