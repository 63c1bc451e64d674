"""Wall time of ``configs/clip.py`` end to end, per stage, on a random CLIP of ViT-B/32's shape.

Writes a random transformers CLIP of openai/clip-vit-base-patch32's shape (``common.write_hf_clip``,
a character-level tokenizer: captions are longer in tokens than with CLIP's BPE) and a local data
set of the default config's size (an image folder of CIFAR-10's ten classes at 224 px, 2,000 /
500 / 1,000 train / validation / test images; 10,000 captions naming the config's colours and
animals), then
runs the experiment with the default config (only the model and data sources changed) and prints
each stage's seconds. The weights are random, so the report's figures mean nothing; the cost is
that of the real checkpoint, which cannot be downloaded here.

    python bench/clip_run.py            # ViT-B/32 shape, the default config's sizes
    python bench/clip_run.py --tiny     # smoke test: a tiny CLIP and a tiny data set

The last stdout line is one JSON object: {"bench": "clip_run", "seconds", "stage_seconds", ...}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--progress", action="store_true", help="the experiment's progress bars on stderr")
    args = ap.parse_args(argv)

    from configs import clip as clip_config
    from mrepe_jax.experiments import clip

    c = clip_config.get_config()
    shape = "tiny" if args.tiny else "b32"
    if args.tiny:
        c.images.num = dict(train=60, validation=30, test=30)
        c.captions.limit = 300
        c.align.update(num_train=60, num_test=30)
        c.align.map.update(epochs=2, batch_size=16, memory_size=16)
        c.steer.num_inputs = 16
        c.causal.update(num_pairs=4, bootstrap_resamples=100)
    per_split = {"train": c.images.num.train, "val": c.images.num.validation, "test": c.images.num.test}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        common.write_hf_clip(tmp / "clip", shape)
        size = common.HF_CLIP_SHAPES[shape]["image_size"]
        common.write_concept_data(tmp / "data", c.images.classes, per_split, size,
                                  c.captions.families.to_dict(), c.captions.limit)
        setup = time.perf_counter() - t0
        c.model.name = str(tmp / "clip")
        c.images.update(source="folder", path=str(tmp / "data"))
        c.captions.update(source="file", path=str(tmp / "data" / "captions.txt"))
        print(f"data and checkpoint written in {setup:.1f} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = clip.run(c, tmp / "work", progress=args.progress)
        seconds = time.perf_counter() - t0
    common.print_run("clip_run", f"{shape} CLIP", results, seconds, setup, shape=shape, images=per_split,
                     captions=c.captions.limit, pairs=c.causal.num_pairs)


if __name__ == "__main__":
    main()
