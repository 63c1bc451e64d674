"""Percentile bootstrap CIs (mrepe_jax.reading.bootstrap)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.reading import bootstrap
from mrepe_jax.reading.bootstrap import bootstrap_ci


def reference_loop(samples, statistic, n_resamples, alpha, key):
    """A plain Python loop over the same resampled index arrays."""
    samples = np.asarray(samples)
    n = samples.shape[0]
    idx = np.asarray(jax.random.bits(key, (n_resamples, n), jnp.uint32) % n)
    flat = samples.reshape(n, -1)
    stats = np.stack([[statistic(flat[i, c]) for c in range(flat.shape[1])] for i in idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=0)
    est = np.array([statistic(flat[:, c]) for c in range(flat.shape[1])])
    shape = samples.shape[1:]
    return est.reshape(shape), lo.reshape(shape), hi.reshape(shape)


@pytest.mark.parametrize("statistic,np_statistic", [(jnp.mean, np.mean), (jnp.median, np.median)])
def test_matches_python_loop(statistic, np_statistic):
    x = jax.random.normal(jax.random.PRNGKey(0), (30, 3, 2))
    key = jax.random.PRNGKey(5)
    est, lo, hi = bootstrap_ci(x, statistic, n_resamples=200, alpha=0.1, key=key)
    ref = reference_loop(x, np_statistic, 200, 0.1, key)
    for got, want in zip((est, lo, hi), ref):
        assert got.shape == (3, 2)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert bool(jnp.all(lo <= est)) and bool(jnp.all(est <= hi))


def test_one_dimensional_samples_give_scalars():
    x = jnp.arange(10.0)
    est, lo, hi = bootstrap_ci(x)
    assert est.shape == lo.shape == hi.shape == ()
    assert float(est) == pytest.approx(4.5)
    assert 2.0 < float(lo) < 4.5 < float(hi) < 7.0


def test_chunked_resamples_equal_unchunked():
    x = jax.random.normal(jax.random.PRNGKey(1), (20, 4))
    full = bootstrap_ci(x, jnp.median, n_resamples=100)
    chunked = bootstrap_ci(x, jnp.median, n_resamples=100, batch_size=7)
    for a, b in zip(full, chunked):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_coverage_of_a_known_mean_is_near_nominal():
    """200 synthetic data sets (fixed seed): the 95% CI covers the true mean in 90-99% of them."""
    true_mean, n_sets, n = 1.5, 200, 60
    data = true_mean + jax.random.normal(jax.random.PRNGKey(42), (n_sets, n))
    keys = jax.random.split(jax.random.PRNGKey(7), n_sets)
    covered = 0
    for d, k in zip(data, keys):
        _, lo, hi = bootstrap_ci(d, n_resamples=1000, alpha=0.05, key=k)
        covered += int(lo <= true_mean <= hi)
    assert 0.90 * n_sets <= covered <= 0.99 * n_sets, covered


def test_is_one_compiled_vmapped_call():
    x = jax.random.normal(jax.random.PRNGKey(2), (40, 5))
    before = bootstrap._bootstrap._cache_size()
    bootstrap_ci(x, jnp.median, key=jax.random.PRNGKey(0))
    bootstrap_ci(x, jnp.median, key=jax.random.PRNGKey(1))  # new key, same shapes: no retrace
    assert bootstrap._bootstrap._cache_size() == before + 1
    # The public call is that one jit, whose program does not grow with the number of
    # resamples: no unrolled Python loop.
    key = jax.random.PRNGKey(0)
    outer = jax.make_jaxpr(lambda v, k: bootstrap_ci(v, jnp.median, n_resamples=10, key=k))(x, key)
    assert [str(e.primitive) for e in outer.eqns] == ["jit"]
    sizes = [
        len(bootstrap._bootstrap.trace(x, key, statistic=jnp.median, n_resamples=r, alpha=0.05,
                                       batch_size=r).jaxpr.eqns)
        for r in (10, 1000)
    ]
    assert sizes[0] == sizes[1] < 100


def test_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        bootstrap_ci(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(jnp.ones(5), alpha=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(jnp.ones(5), n_resamples=0)


def test_non_finite_samples_are_refused():
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"bootstrap samples hold 1 non-finite values, the first at "
                                         r"index \(2, 1\) of shape \(4, 3\)"):
        bootstrap_ci(x)
