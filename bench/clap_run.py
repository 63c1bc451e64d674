"""Wall time and peak memory of ``configs/clap.py`` end to end, per stage, on a random CLAP of
laion/clap-htsat-unfused's shape.

Writes a random transformers CLAP of clap-htsat-unfused's shape (``common.write_hf_clap``, HF's
init, a character-level tokenizer) and a local data set (``common.write_audio_data``: a folder of
1-s 16-kHz WAV tones, one pitch per class, resampled to the model's 48 kHz, and a captions file
naming the config's animals and vehicles), then runs the experiment and prints each stage's
seconds and the peak host RSS. The weights are random, so the report's figures mean nothing; the
cost is that of the real checkpoint, which cannot be downloaded here. Every recording is padded
to the extractor's 10 s (``repeatpad``), so a recording costs one 10-s forward whatever its length.

    python bench/clap_run.py             # clap-htsat-unfused shape, --num recordings per split
    python bench/clap_run.py --full      # the default config's sizes (2,000 / 500 / 1,000, 10,000 captions)
    python bench/clap_run.py --tiny      # smoke test: a tiny CLAP and a tiny data set

The last stdout line is one JSON object: {"bench": "clap_run", "seconds", "stage_seconds", "rss_mb", ...}.
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

RATE = 16_000  # speech_commands' rate: the run resamples it as it would the real data


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--full", action="store_true", help="the default config's data sizes")
    ap.add_argument("--num", type=int, nargs=3, default=(200, 100, 100), metavar=("TRAIN", "VAL", "TEST"),
                    help="recordings per split (without --full)")
    ap.add_argument("--progress", action="store_true", help="the experiment's progress bars on stderr")
    args = ap.parse_args(argv)

    from configs import clap as clap_config
    from mrepe_jax.experiments import clap

    c = clap_config.get_config()
    c.audio.classes = clap_config.WORDS
    shape = "tiny" if args.tiny else "unfused"
    if args.tiny:
        c.audio.num = dict(train=60, validation=30, test=30)
        c.captions.limit = 300
        c.align.update(num_train=60, num_test=30)
        c.align.map.update(epochs=2, batch_size=16, memory_size=16)
        c.steer.num_inputs = 16
        c.causal.update(num_pairs=4, bootstrap_resamples=100)
    elif not args.full:
        train, val, test = args.num
        c.audio.num = dict(train=train, validation=val, test=test)
        c.captions.limit = 1000
        c.align.update(num_train=train, num_test=test)
        c.steer.num_inputs = min(test, 64)
        c.causal.num_pairs = 4
    per_split = {"train": c.audio.num.train, "val": c.audio.num.validation, "test": c.audio.num.test}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        common.write_hf_clap(tmp / "clap", shape)
        common.write_audio_data(tmp / "data", c.audio.classes, per_split, RATE, c.captions.families.to_dict(),
                                c.captions.limit)
        setup = time.perf_counter() - t0
        c.model.name = str(tmp / "clap")
        c.audio.update(source="folder", path=str(tmp / "data"))
        c.captions.update(source="file", path=str(tmp / "data" / "captions.txt"))
        print(f"data and checkpoint written in {setup:.1f} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = clap.run(c, tmp / "work", progress=args.progress)
        seconds = time.perf_counter() - t0
    common.print_run("clap_run", f"{shape} CLAP", results, seconds, setup, shape=shape, recordings=per_split,
                     captions=c.captions.limit, pairs=c.causal.num_pairs, text_tokens=c.model.max_text_tokens)


if __name__ == "__main__":
    main()
