"""XLA flags of every test process (a test helper, not a test).

The tests run tiny models, so their time goes to compiling, not running: LLVM's backend
optimisations at level 0 cut the suite's wall time by about 30 % (335 s -> 233 s of pytest on a
2-core box, 2026-11-28) without changing what is computed (XLA's fast-math stays off either way;
the parity tests hold at the same tolerances). Users and the benches keep XLA's defaults.
"""

from __future__ import annotations

COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def with_compile_flags(flags: str = "") -> str:
    """``flags`` plus ``COMPILE_FLAGS`` (once), for a test process's ``XLA_FLAGS``."""
    flags = flags.strip()
    return flags if COMPILE_FLAGS in flags else f"{flags} {COMPILE_FLAGS}".strip()
