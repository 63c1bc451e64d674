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


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (95% for the default ``z``):
    unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 and n the bounds are exactly 0 and 1; the formula leaves a rounding error there.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)
