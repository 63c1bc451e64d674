"""Peak memory of activation streaming at 1x and 10x data (mrepe_jax.reading.activations).

Streams synthetic images through a small CLIP vision tower, capturing every layer's ``resid_post``
with per-group means and covariances, once with N and once with 10N examples. Each size runs in a
fresh subprocess so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own. Streaming holds
O(sites * groups * d^2) state, so the two peaks should match: target ``rss_10x / rss_1x <= 1.2``.

    python bench/streaming.py            # 2,000 vs 20,000 examples
    python bench/streaming.py --tiny     # smoke test: tiny model, 64 vs 640 examples

The last stdout line is one JSON object: {"bench": "streaming", "rss_1x_mb", "rss_10x_mb", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Run as ``python bench/streaming.py`` from a checkout, without the package installed, Python puts
# bench/ on sys.path, not the repository root: add it, so that ``bench`` and ``mrepe_jax`` import
# (here and in the worker subprocesses, which run this file the same way).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

TARGET_RATIO = 1.2

SETTINGS = {
    # hidden, mlp, layers, heads, image, patch, batch, groups, n_1x
    "default": dict(hidden=128, mlp=256, layers=4, heads=4, image=32, patch=8, batch=100, groups=4, n=2000),
    "tiny": dict(hidden=32, mlp=64, layers=2, heads=4, image=16, patch=8, batch=32, groups=3, n=64),
}


def worker(n: int, s: dict) -> dict:
    """Runs in its own process: streams ``n`` synthetic examples, reports peak RSS."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mrepe_jax.models.clip import CLIPModel
    from mrepe_jax.reading import activations

    vision = dict(
        hidden_size=s["hidden"], intermediate_size=s["mlp"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], image_size=s["image"], patch_size=s["patch"],
    )
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                vocab_size=100, max_position_embeddings=8, eos_token_id=99)
    model = CLIPModel(common.clip_config(vision, text, projection=32))
    img = s["image"]
    params = model.init(jax.random.key(0), jnp.zeros((1, img, img, 3)), jnp.zeros((1, 8), jnp.int32))

    def batches():
        # Generated lazily, batch by batch: the dataset never exists in memory as a whole.
        rng = np.random.default_rng(0)
        for start in range(0, n, s["batch"]):
            b = min(s["batch"], n - start)
            yield {
                "pixels": rng.standard_normal((b, img, img, 3), dtype=np.float32),
                "label": rng.integers(0, s["groups"], b).astype(np.int32),
            }

    rss_start = common.rss_mb()
    t0 = time.perf_counter()
    stats = activations.stream_statistics(
        activations.tower_apply(model, "vision", "pixels"), batches(), ("vision.layers.*.resid_post",),
        params=params, group_fn="label", num_groups=s["groups"], reduce="mean", covariance=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    counts = {k: int(np.asarray(m.count).sum()) for k, m in stats.items()}
    assert all(c == n for c in counts.values()), counts
    return {"n": n, "rss_peak_mb": common.rss_mb(), "rss_before_stream_mb": rss_start, "seconds": seconds,
            "sites": len(stats)}


def run_worker(n: int, mode: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    return common.run_worker(__file__, ["--worker", n, "--mode", mode], env, f"n={n}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--n", type=int, default=None, help="examples at 1x (10x is ten times this)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(args.worker, SETTINGS[args.mode])))
        return

    mode = "tiny" if args.tiny else "default"
    s = SETTINGS[mode]
    n = args.n or s["n"]
    one, ten = run_worker(n, mode), run_worker(10 * n, mode)
    ratio = ten["rss_peak_mb"] / one["rss_peak_mb"]
    print(f"model: CLIP vision d={s['hidden']} layers={s['layers']} tokens={(s['image'] // s['patch']) ** 2 + 1}, "
          f"{one['sites']} resid_post sites, {s['groups']} groups, mean+covariance, batch {s['batch']}")
    for tag, r in (("1x", one), ("10x", ten)):
        print(f"{tag:>4}: {r['n']:>6} examples  peak RSS {r['rss_peak_mb']:8.1f} MiB "
              f"(before streaming {r['rss_before_stream_mb']:.1f})  {r['seconds']:.1f} s  "
              f"{r['n'] / r['seconds']:.0f} ex/s")
    print(f"ratio 10x/1x: {ratio:.3f} (target <= {TARGET_RATIO})")
    print(json.dumps({
        "bench": "streaming", "mode": mode,
        "rss_1x_mb": round(one["rss_peak_mb"], 1), "rss_10x_mb": round(ten["rss_peak_mb"], 1),
        "ratio": round(ratio, 4), "target": TARGET_RATIO, "pass": ratio <= TARGET_RATIO,
        "n_1x": one["n"], "n_10x": ten["n"], "seconds_1x": round(one["seconds"], 2),
        "seconds_10x": round(ten["seconds"], 2), "sites": one["sites"], "groups": s["groups"],
        "hidden": s["hidden"], "covariance": True,
    }))


if __name__ == "__main__":
    main()
