"""Cost measurements: peak bytes follow what a program holds, and timing returns what was timed."""

import jax.numpy as jnp
import pytest

from mrepe_jax.metrics.cost import peak_bytes, time_calls, time_interleaved


def test_peak_bytes_counts_arguments_outputs_and_temporaries():
    x = jnp.ones((64, 64), jnp.float32)
    small = peak_bytes(lambda a: a.sum(), x)
    # An [n, n, 64] outer product held to the end: far more than the argument alone.
    big = peak_bytes(lambda a: jnp.einsum("ij,kl->ijkl", a, a[:4]).reshape(64, -1), x)
    assert 64 * 64 * 4 <= small < 2 * 64 * 64 * 4 + 1024
    assert big >= 64 * 64 * 4 * 64 * 4


def test_timers_report_a_first_call_and_a_median():
    calls = []
    first, median = time_calls(lambda: calls.append(1), 3)
    assert len(calls) == 4 and first >= 0 and median >= 0
    timed = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 1)
    assert set(timed) == {"a", "b"} and len(timed["a"][2]) == 2
    assert calls[-4:] == ["a", "b", "a", "b"]  # round-robin


def test_a_backend_without_memory_analysis_is_named(monkeypatch):
    import jax

    class Compiled:
        def memory_analysis(self):
            return None

    class Lowered:
        def compile(self):
            return Compiled()

    class Jitted:
        def lower(self, *a):
            return Lowered()

    monkeypatch.setattr(jax, "jit", lambda fn: Jitted())
    with pytest.raises(RuntimeError, match="reports no memory analysis"):
        peak_bytes(lambda a: a, 1.0)
