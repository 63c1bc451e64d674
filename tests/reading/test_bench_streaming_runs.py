"""bench/streaming.py --tiny runs end to end and reports its JSON line."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bench_streaming_tiny():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "streaming.py"), "--tiny"],
                         capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bench"] == "streaming"
    for key in ("rss_1x_mb", "rss_10x_mb", "ratio", "n_1x", "n_10x", "target", "pass"):
        assert key in res, key
    assert res["n_10x"] == 10 * res["n_1x"]
    assert res["rss_1x_mb"] > 0 and res["rss_10x_mb"] > 0
    assert abs(res["ratio"] - res["rss_10x_mb"] / res["rss_1x_mb"]) < 1e-3
