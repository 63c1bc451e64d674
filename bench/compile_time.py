"""First-call (compile) cost of the exact 12 x 50 patching sweep and of attribution, by XLA flags and
with JAX's persistent compilation cache, each in a fresh process.

On one H200 the sweep's first call took 31.6 s and its compiled run 0.208 s (jax 0.11.2,
2026-11-28), and attribution's first call 33.2 s; on 2 CPU cores the same programs compile in
about 1.5 s and 1.2 s. What XLA:GPU spends the rest on is what this bench tells apart. Each row
runs ``bench/patching.py --nnsight=false --hooks=false`` (ViT-B/32, one image pair, denoising) in
its own process with one setting:

  default          XLA's defaults;
  <flag set>       the backend's compile-time flags (``FLAG_SETS``): on GPU no autotuning
                   (``--xla_gpu_autotune_level=0``) and no Triton GEMMs; on CPU the LLVM
                   optimisation level the tests run at;
  cache cold       the defaults, writing a fresh compilation cache (``mrepe_jax.compile_cache``);
  cache warm       the defaults in another process reading that cache, as a second run would.

A flag that makes the first call cheap is only worth it if the compiled run stays as fast and the
numbers stay the same: every row prints its steady-state times, and its effects' largest
difference from the default row's (exact and attribution).

    python bench/compile_time.py                    # ViT-B/32; ~3 min on 2 CPU cores
    python bench/compile_time.py --tiny             # a tiny tower: a smoke run of the script
    python bench/compile_time.py --dtype=bf16 --rows=default,cache_cold,cache_warm

The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common

#: Compile-time settings per backend: row name -> XLA flags.
FLAG_SETS = {
    "gpu": {"autotune_0": "--xla_gpu_autotune_level=0",
            "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false"},
    "cpu": {"llvm_opt_0": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"},
    "tpu": {},
}
CACHE_ROWS = ("cache_cold", "cache_warm")

FLAGS = flags.FLAGS
flags.DEFINE_bool("tiny", False, "a tiny tower: a smoke run")
flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16"], "compute dtype of the sweeps")
flags.DEFINE_integer("iters", 1, "timed calls after the first (median reported)")
flags.DEFINE_list("rows", [], "rows to run (default: every row of this backend)")
PATCHING = Path(__file__).with_name("patching.py")


def platform() -> str:
    """JAX's default backend, asked in a child process so that this one never holds the device."""
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def rows_for(backend: str, chosen: list[str]) -> dict[str, tuple[str, bool]]:
    """row -> (XLA flags, uses the cache), in run order; ``chosen`` filters (an unknown name fails
    with the known ones)."""
    rows = {"default": ("", False)}
    rows.update({name: (f, False) for name, f in FLAG_SETS.get(backend, {}).items()})
    rows.update({name: ("", True) for name in CACHE_ROWS})
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; on {backend}: {', '.join(rows)}")
    if "cache_warm" in chosen and "cache_cold" not in chosen:
        raise app.UsageError("cache_warm reads what cache_cold writes: run both")
    return {k: v for k, v in rows.items() if not chosen or k in chosen}


def run_row(xla_flags: str, cache: Path | None, effects: Path) -> dict:
    args = ["--nnsight=false", "--hooks=false", f"--iters={FLAGS.iters}", f"--dtype={FLAGS.dtype}",
            f"--save_effects={effects}", f"--xla_flags={xla_flags}"]
    if cache is not None:
        args.append(f"--compile_cache={cache}")
    if FLAGS.tiny:
        args.append("--tiny")
    return common.run_worker(str(PATCHING), args, dict(os.environ), f"flags {xla_flags!r}")


def main(argv):
    del argv
    import numpy as np

    backend = platform()
    rows = rows_for(backend, FLAGS.rows)
    print(f"backend {backend}; rows: {', '.join(rows)}; ViT-B/32 sweep unless --tiny "
          f"(tiny={FLAGS.tiny}), {FLAGS.dtype}")
    records, effects = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "compile_cache"
        for name, (xla_flags, cached) in rows.items():
            out = Path(tmp) / f"{name}.npz"
            r = run_row(xla_flags, cache if cached else None, out)
            with np.load(out) as f:
                effects[name] = {k: f[k] for k in ("exact", "attribution")}
            ref = effects[next(iter(rows))]
            diff = max(float(np.abs(effects[name][k] - ref[k]).max()) for k in ref)
            records[name] = {
                "xla_flags": xla_flags, "compile_cache": cached,
                "exact_first_call_s": r["ours_exact_first_call_s"], "exact_s": r["ours_exact_s"],
                "attribution_first_call_s": r["ours_attribution_first_call_s"],
                "attribution_s": r["ours_attribution_s"],
                "max_effect_diff_vs_first_row": diff, "device": r["device"],
            }
            print(f"{name:15s} exact: first {r['ours_exact_first_call_s']:7.2f} s, then "
                  f"{r['ours_exact_s']:.4f} s | attribution: first "
                  f"{r['ours_attribution_first_call_s']:7.2f} s, then {r['ours_attribution_s']:.4f} s"
                  f" | max |effect - {next(iter(rows))}| {diff:.1e}", flush=True)
        entries = len(list(cache.glob("*"))) if cache.exists() else 0
    print(json.dumps({"bench": "compile_time", "backend": backend, "dtype": FLAGS.dtype,
                      "tiny": FLAGS.tiny, "rows": records, "cache_entries": entries,
                      "load_average": common.load_average(), "date": common.utc_now()}))


if __name__ == "__main__":
    app.run(main)
