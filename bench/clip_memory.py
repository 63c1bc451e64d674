"""Peak memory of the CLIP experiment's streamed stages at 1x and 10x data (experiments/clip/pipeline.py).

Runs ``configs/clip.py`` on a tiny random HF CLIP saved locally, with a local image folder (3
classes) and a captions file, once with N examples and once with 10N (images per split and
captions alike). Each size runs in a fresh subprocess so that its peak RSS is its own. The stages
stream their data (per-value sums and per-example scores, never a split's activations), so the
two peaks should match: target ``rss_10x / rss_1x <= 1.2``. The run includes identification,
direction bundles and causal patching (a fixed number of pairs, whatever the data size).

    python bench/clip_memory.py            # 600 vs 6,000 images and captions
    python bench/clip_memory.py --tiny     # smoke test: 60 vs 600

The last stdout line is one JSON object: {"bench": "clip_memory", "rss_1x_mb", "rss_10x_mb", "ratio", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

TARGET_RATIO = 1.2
CLASSES = ("cat", "dog", "ship")
WORDS = ("red", "blue", "green")


def write_data(root: Path, n: int) -> None:
    """``n`` train images, ``n // 2`` validation and test images, ``n`` captions."""
    common.write_concept_data(root, CLASSES, {"train": n, "val": n // 2, "test": n // 2}, 32,
                              {"colour": WORDS}, n)


def worker(checkpoint: str, data: str, n: int) -> dict:
    """Runs in its own process: the experiment on ``n`` examples, then this process's peak RSS."""
    from configs import clip as clip_config
    from mrepe_jax.experiments import clip

    c = clip_config.get_config()
    c.model.update(name=checkpoint, batch_size=50)
    c.images.update(source="folder", path=data, classes=CLASSES,
                    num=dict(train=n, validation=n // 2, test=n // 2))
    c.captions.update(source="file", path=os.path.join(data, "captions.txt"), limit=n)
    c.captions.families = {"colour": WORDS}
    c.causal.update(num_pairs=4, heads=False, bootstrap_resamples=100)
    # The maps fit on a fixed number of pairs (a config limit, not the data's size), small here.
    c.align.update(num_train=48, num_test=24)
    c.align.map.update(epochs=2, batch_size=16, memory_size=16)
    rss_start = common.rss_mb()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        results = clip.run(c, work, progress=False)
    return {"n": n, "rss_peak_mb": common.rss_mb(), "rss_before_mb": rss_start,
            "seconds": time.perf_counter() - t0,
            "table1_mrepe_vision": results["identification"]["mrepe"]["vision"]["object"]}


def run_worker(checkpoint: Path, data: Path, n: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    return common.run_worker(__file__, ["--worker", n, "--checkpoint", checkpoint, "--data", data],
                             env, f"n={n}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--n", type=int, default=None, help="train images and captions at 1x")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.checkpoint, args.data, args.worker)))
        return

    n = args.n or (60 if args.tiny else 600)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common.write_hf_clip(tmp / "clip")
        runs = {}
        for tag, size in (("1x", n), ("10x", 10 * n)):
            write_data(tmp / tag, size)
            runs[tag] = run_worker(tmp / "clip", tmp / tag, size)
    one, ten = runs["1x"], runs["10x"]
    ratio = ten["rss_peak_mb"] / one["rss_peak_mb"]
    print(f"tiny HF CLIP (2 layers x 16 per tower), folder of {len(CLASSES)} classes + captions file")
    for tag, r in runs.items():
        print(f"{tag:>4}: {r['n']:>6} train images (+{r['n']} held out) and {r['n']} captions  "
              f"peak RSS {r['rss_peak_mb']:8.1f} MiB (before the run {r['rss_before_mb']:.1f})  "
              f"{r['seconds']:.1f} s")
    print(f"ratio 10x/1x: {ratio:.3f} (target <= {TARGET_RATIO})")
    print(json.dumps({
        "bench": "clip_memory", "mode": "tiny" if args.tiny else "default",
        "rss_1x_mb": round(one["rss_peak_mb"], 1), "rss_10x_mb": round(ten["rss_peak_mb"], 1),
        "ratio": round(ratio, 4), "target": TARGET_RATIO, "pass": ratio <= TARGET_RATIO,
        "n_1x": one["n"], "n_10x": ten["n"], "seconds_1x": round(one["seconds"], 2),
        "seconds_10x": round(ten["seconds"], 2),
    }))


if __name__ == "__main__":
    main()
