"""CMC (eq 8) and its parts against direct numpy transcriptions."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from mrepe_jax.metrics.cmc import cmc, js_similarity, zero_shot_distribution


def _dists(n, v, rng, zeros=False):
    p = rng.dirichlet(np.ones(v), size=n)
    if zeros:
        p[:, 0] = 0.0
        p /= p.sum(1, keepdims=True)
    return p


@pytest.mark.parametrize("zeros", [False, True])
def test_js_similarity_is_one_minus_scipy_jsd_in_bits(zeros):
    rng = np.random.default_rng(0)
    p, q = _dists(50, 6, rng, zeros), _dists(50, 6, rng)
    want = 1 - jensenshannon(p, q, base=2, axis=1) ** 2  # scipy returns the square root
    np.testing.assert_allclose(js_similarity(p, q), want, atol=1e-6)


def test_js_similarity_bounds():
    np.testing.assert_allclose(js_similarity(np.eye(3), np.eye(3)), 1.0, atol=1e-7)
    np.testing.assert_allclose(js_similarity(np.eye(3), np.roll(np.eye(3), 1, 0)), 0.0, atol=1e-7)


def test_cmc_is_the_mean_over_pairs():
    rng = np.random.default_rng(1)
    p, q = _dists(40, 4, rng), _dists(40, 4, rng)
    value, per_pair = cmc(p, q)
    assert per_pair.shape == (40,)
    want = np.mean([1 - jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(value, want, atol=1e-6)


def test_zero_shot_distribution_is_a_scaled_cosine_softmax():
    rng = np.random.default_rng(2)
    e, prompts = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (prompts / np.linalg.norm(prompts, axis=1, keepdims=True)).T
    want = np.exp(20 * cos) / np.exp(20 * cos).sum(1, keepdims=True)
    np.testing.assert_allclose(zero_shot_distribution(e, prompts, 20.0), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"embeddings \[N, D\] and prompts \[V, D\], got \(5, 8\) and \(3, 7\)"):
        zero_shot_distribution(e, prompts[:, :7], 20.0)
    with pytest.raises(ValueError, match=r"one shape, got \(5, 3\) and \(5, 4\)"):
        js_similarity(np.ones((5, 3)) / 3, np.ones((5, 4)) / 4)
