"""Statistics for the report's tables: mean +- std over seeds, paired permutation tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def paired_permutation_test(a, b, key, num_permutations: int = 10_000) -> float:
    """Two-sided p-value that paired samples ``a`` and ``b`` [N] have the same mean.

    Under the null the sign of each difference ``a_n - b_n`` is exchangeable, so the test flips
    signs at random (``num_permutations`` draws, one ``jax.vmap``'d call) and counts statistics at
    least as extreme as the observed mean difference; the observed assignment counts as one draw,
    so the p-value is never 0: ``(1 + #{|t*| >= |t|}) / (1 + num_permutations)``.
    """
    d = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
    if d.ndim != 1 or d.shape[0] < 1:
        raise ValueError(f"paired samples must be two [N] arrays with N >= 1, got {np.shape(a)} "
                         f"and {np.shape(b)}")
    if not bool(jnp.all(jnp.isfinite(d))):
        raise ValueError("paired samples hold non-finite values")
    observed = jnp.abs(jnp.mean(d))
    signs = jax.random.rademacher(key, (num_permutations, d.shape[0]), jnp.float32)
    # A relative tolerance: ties with the observed statistic must count, not drop by rounding.
    null = jax.vmap(lambda s: jnp.abs(jnp.mean(s * d)))(signs)
    extreme = jnp.sum(null >= observed * (1 - 1e-6) - 1e-12)
    return float((1 + extreme) / (1 + num_permutations))


def mean_std(values) -> tuple[float, float]:
    """Mean and population std of ``values`` (over seeds, as the tables report them)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise ValueError("mean_std of no values")
    return float(v.mean()), float(v.std())
