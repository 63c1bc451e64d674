"""Directions recover a planted concept direction (eq 6, RepE PCA, logistic probe)."""

import numpy as np
import pytest

from mrepe_jax.reading import activations as A
from mrepe_jax.reading import directions as D

DIM = 64


def planted(seed=0, n=2000, shift=3.0, paired=False):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=DIM)
    u /= np.linalg.norm(u)
    offset = rng.normal(0, 5, DIM)  # a shared non-zero mean, as residual streams have
    base = rng.normal(size=(n, DIM)) + offset
    neg = base + 0.3 * rng.normal(size=(n, DIM)) if paired else rng.normal(size=(n, DIM)) + offset
    pos = base + shift * u + (0.3 * rng.normal(size=(n, DIM)) if paired else 0)
    return pos.astype(np.float32), neg.astype(np.float32), u


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_mean_diff_recovers_planted_direction():
    pos, neg, u = planted()
    d = D.direction_mean_diff(pos, neg)
    assert cos(d, u) > 0.99
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, atol=1e-6)
    raw = D.direction_mean_diff(pos, neg, normalize=False)
    np.testing.assert_allclose(raw, pos.mean(0) - neg.mean(0), atol=1e-4)  # eq 6 verbatim


def test_mean_diff_from_streamed_moments_matches():
    pos, neg, u = planted(1, n=300)
    x = np.concatenate([pos, neg])
    labels = np.repeat([1, 0], 300)
    stats = A.update({"s": A.init_moments(2, DIM)}, {"s": x}, labels)
    np.testing.assert_allclose(D.mean_diff_from_moments(stats["s"], 1, 0), D.direction_mean_diff(pos, neg), atol=1e-5)
    with pytest.raises(ValueError, match="positive set is empty"):
        D.mean_diff_from_moments(A.init_moments(3, DIM), [0], [1, 2])


def test_pca_recovers_planted_direction():
    pos, neg, u = planted(2, n=500, paired=True)
    d = D.direction_pca(pos, neg)
    assert cos(d, u) > 0.9
    assert np.mean(pos @ d) > np.mean(neg @ d)  # sign-calibrated
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, atol=1e-6)


def test_probe_recovers_planted_direction():
    pos, neg, u = planted(3, n=500, shift=2.0)
    x = np.concatenate([pos, neg])
    y = np.repeat([True, False], 500)
    d = D.direction_probe(x, y, steps=300)
    assert cos(d, u) > 0.9
    assert np.mean(pos @ d) > np.mean(neg @ d)
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, atol=1e-6)


def test_calibrate_sign():
    pos, neg, u = planted(4, n=100)
    np.testing.assert_allclose(D.calibrate_sign(-u, pos, neg), u, atol=1e-7)
    np.testing.assert_allclose(D.calibrate_sign(u, pos, neg), u, atol=1e-7)
    with pytest.raises(ValueError, match="does not match"):
        D.calibrate_sign(u[:5], pos, neg)


@pytest.mark.parametrize("fn", [D.direction_mean_diff, D.direction_pca])
def test_errors(fn):
    pos, neg, _ = planted(5, n=10)
    with pytest.raises(ValueError, match="positive set is empty"):
        fn(pos[:0], neg)
    with pytest.raises(ValueError, match="negative set is empty"):
        fn(pos, neg[:0])
    with pytest.raises(ValueError, match=r"\(10, 64\).*\(10, 32\)"):
        fn(pos, neg[:, :32])
    bad = pos.copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match="positive contains NaN"):
        fn(bad, neg)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fn(pos[0], neg)


def test_probe_and_pca_specific_errors():
    pos, neg, _ = planted(6, n=10)
    with pytest.raises(ValueError, match="contrast pairs"):
        D.direction_pca(pos, neg[:7])
    x = np.concatenate([pos, neg])
    with pytest.raises(ValueError, match="positive set is empty"):
        D.direction_probe(x, np.zeros(20, bool))
    with pytest.raises(ValueError, match="negative set is empty"):
        D.direction_probe(x, np.ones(20, bool))
    with pytest.raises(ValueError, match="do not match"):
        D.direction_probe(x, np.ones(19, bool))
    with pytest.raises(ValueError, match="0/1"):
        D.direction_probe(x, np.arange(20))
    with pytest.raises(ValueError, match="norm 0"):
        D.direction_mean_diff(pos, pos)
