"""What a computation costs: wall time per call and the peak memory of its compiled program
(Table 5). Used by the report's efficiency table and by ``bench/`` alike, so both measure the same
way. No JAX import at module level: bench scripts set ``XLA_FLAGS`` before JAX starts.

Every callable timed here must block until its result exists (``.block_until_ready()`` for
jax, ``.item()`` or numpy for torch): jax dispatches asynchronously, and an unblocked call would
time the dispatch only.
"""

from __future__ import annotations

import statistics
import time


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_calls(fn, iters: int):
    """(first call seconds, median of ``iters`` further calls); the first call compiles, so it is
    reported apart. With ``iters`` 0 the median is the first call's time."""
    first = _seconds(fn)
    times = [_seconds(fn) for _ in range(iters)]
    return first, statistics.median(times) if times else first


def time_interleaved(calls: dict, iters: int, warmup: int) -> dict:
    """Times each blocking callable in ``calls``: {name: (first call s, median s, timed s)}.

    The timed calls go round-robin (one of each per round), so that background load on a shared
    machine slows every contender alike and the ratios stay meaningful even when the absolute
    numbers do not.
    """
    first = {}
    for name, fn in calls.items():
        first[name] = _seconds(fn)  # compiles (jax) / allocates and picks kernels (torch)
        for _ in range(max(warmup - 1, 0)):
            fn()
    times = {name: [] for name in calls}
    for _ in range(iters):
        for name, fn in calls.items():
            times[name].append(_seconds(fn))
    return {name: (first[name], statistics.median(ts), ts) for name, ts in times.items()}


def compiled_peak_bytes(compiled) -> int:
    """Peak memory, in bytes, of a compiled program (``jax.jit(f).lower(*args).compile()``), as
    XLA's buffer assignment states it (arguments + outputs + temporaries, less aliasing): a
    property of the program, so it does not vary with load or with what else the process holds."""
    stats = compiled.memory_analysis()
    if stats is None:
        import jax

        raise RuntimeError(f"this backend ({jax.default_backend()}) reports no memory analysis")
    peak = getattr(stats, "peak_memory_in_bytes", 0)
    return int(peak or stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def peak_bytes(fn, *args) -> int:
    """``compiled_peak_bytes`` of ``jax.jit(fn)`` on ``args``."""
    import jax

    return compiled_peak_bytes(jax.jit(fn).lower(*args).compile())
