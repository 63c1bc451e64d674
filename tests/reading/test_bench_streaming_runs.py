"""bench/streaming.py --tiny runs end to end and reports its JSON line."""

import pytest

from tests.benches import run_tiny


@pytest.mark.slow  # a subprocess run of a bench script (~10-20 s): `make test-slow`
def test_bench_streaming_tiny():
    res, _ = run_tiny("streaming")
    assert res["bench"] == "streaming"
    for key in ("rss_1x_mb", "rss_10x_mb", "ratio", "n_1x", "n_10x", "target", "pass"):
        assert key in res, key
    assert res["n_10x"] == 10 * res["n_1x"]
    assert res["rss_1x_mb"] > 0 and res["rss_10x_mb"] > 0
    assert abs(res["ratio"] - res["rss_10x_mb"] / res["rss_1x_mb"]) < 1e-3
