"""XLA flags of every test process (a test helper, not a test).

The tests run tiny models, so their time goes to compiling, not running (2-core Xeon box,
2026-11-28, pytest -n 2):

- LLVM's backend optimisations at level 0 cut the suite's wall time by about 30 % (335 s ->
  233 s of pytest);
- XLA:CPU's legacy fusion emitters instead of the MLIR ones halve what is left of compiling at
  that level (the tiny ToyWorld pipeline in-process: 21.3 -> 10.9 s of XLA compile, 33.5 -> 22.8 s
  in all), and the suite went from 252 s to 172 s of pytest (344 s from 477 s on an emulated
  2.2x-slower box). At XLA's default optimisation level they compile slower, not faster (the
  default demo: 65 -> 86 s of compile), so only the tests use them.

Neither changes what is computed beyond float rounding (XLA's fast-math stays off either way; the
parity tests hold at the same tolerances). Users and the benches keep XLA's defaults.
"""

from __future__ import annotations

COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false")


def with_compile_flags(flags: str = "") -> str:
    """``flags`` plus ``COMPILE_FLAGS`` (once), for a test process's ``XLA_FLAGS``."""
    flags = flags.strip()
    return flags if COMPILE_FLAGS in flags else f"{flags} {COMPILE_FLAGS}".strip()
