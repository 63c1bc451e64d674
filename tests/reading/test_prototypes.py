"""Eq 1 prototypes and thresholds, exact AUROC, and the Table 1 identification score."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.reading import prototypes as P


def brute_auroc(pos, neg):
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 6, rng.integers(1, 40)).astype(np.float32)  # few values: many ties
    neg = rng.integers(0, 5, rng.integers(1, 40)).astype(np.float32)
    assert float(P.auroc(pos, neg)) == pytest.approx(brute_auroc(pos, neg), abs=1e-6)


def test_auroc_edge_cases_and_vmap():
    assert float(P.auroc([1.0, 1.0], [1.0])) == 0.5
    assert float(P.auroc([2.0, 3.0], [0.0, 1.0])) == 1.0
    assert float(P.auroc([0.0], [1.0, 2.0])) == 0.0
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 20)
    idx = rng.integers(0, 30, (7, 30)), rng.integers(0, 20, (7, 20))  # bootstrap resamples
    boot = jax.jit(jax.vmap(lambda i, j: P.auroc(jnp.asarray(pos)[i], jnp.asarray(neg)[j])))(*idx)
    expect = [brute_auroc(pos[i], neg[j]) for i, j in zip(*idx)]
    np.testing.assert_allclose(boot, expect, atol=1e-6)
    with pytest.raises(ValueError, match="0 positive"):
        P.auroc([], [1.0])


def test_prototype_similarity_members():
    rng = np.random.default_rng(0)
    c = rng.normal(size=8)
    reps = c + 0.1 * rng.normal(size=(20, 8))
    reps[0] *= 100  # a large-norm example must not dominate
    p = P.prototype(reps)
    np.testing.assert_allclose(np.linalg.norm(p), 1.0, atol=1e-6)
    assert float(P.similarity(c, p)) > 0.99
    r = np.stack([c, -c, rng.normal(size=8)])
    sims = np.asarray(P.similarity(r, p))
    assert sims.shape == (3,)
    np.testing.assert_allclose(sims[1], -sims[0], atol=1e-6)
    np.testing.assert_array_equal(P.concept_members(r, p, 0.5), sims > 0.5)
    assert not bool(P.concept_members(c, p, float(P.similarity(c, p))))  # strict ">" of eq 1
    assert np.asarray(P.similarity(r, np.stack([p, -p]))).shape == (3, 2)
    with pytest.raises(ValueError, match="feature dims"):
        P.similarity(r[:, :4], p)
    with pytest.raises(ValueError, match="non-empty"):
        P.prototype(np.zeros((0, 8)))


@pytest.mark.parametrize("criterion", ["balanced_accuracy", "f1"])
def test_fit_threshold_separable_is_perfect(criterion):
    rng = np.random.default_rng(1)
    pos, neg = rng.uniform(0.6, 0.9, 30), rng.uniform(-0.2, 0.4, 90)
    tau = P.fit_threshold(pos, neg, criterion)
    assert neg.max() < tau < pos.min()
    assert np.all(pos > tau) and np.all(neg <= tau)
    assert tau == pytest.approx((neg.max() + pos.min()) / 2)


def test_fit_threshold_overlap_and_errors():
    pos, neg = np.array([0.5, 0.7, 0.9]), np.array([0.1, 0.6, 0.2, 0.3])
    tau = P.fit_threshold(pos, neg)
    # Best balanced accuracy: 0.55 < tau < 0.6 misses nothing positive but 0.6 -> 0.5 * (1 + 3/4).
    assert 0.3 < tau < 0.5
    with pytest.raises(ValueError, match="positive scores are empty"):
        P.fit_threshold([], [0.1])
    with pytest.raises(ValueError, match="negative scores contain NaN"):
        P.fit_threshold([0.1], [np.nan])
    with pytest.raises(ValueError, match="criterion"):
        P.fit_threshold([0.1], [0.2], "accuracy")


def test_fit_threshold_breaks_ties_toward_the_smallest_tau():
    """Scores neg 0.1 < pos 0.3 < neg 0.5 < pos 0.7: tau = 0.2 (TPR 1, TNR 1/2) and tau = 0.6
    (TPR 1/2, TNR 1) both reach balanced accuracy 3/4, exactly; the docstring promises the smaller."""
    pos, neg = np.array([0.3, 0.7]), np.array([0.1, 0.5])
    # Balanced accuracy of every candidate, by hand: the maximum is shared by 0.2 and 0.6.
    ba = {t: 0.5 * (np.mean(pos > t) + np.mean(neg <= t)) for t in (0.0, 0.2, 0.4, 0.6, 0.7)}
    assert ba[0.2] == ba[0.6] == max(ba.values()) == 0.75
    assert P.fit_threshold(pos, neg) == pytest.approx(0.2)
    # Shifted below zero (neg -0.5 < pos 0.1 < neg 0.3 < pos 0.5): the tie is -0.2 and 0.4.
    assert P.fit_threshold(np.array([0.1, 0.5]), np.array([-0.5, 0.3])) == pytest.approx(-0.2)


def test_fit_threshold_keeps_the_example_it_was_fitted_to_include():
    pos, neg = np.array([0.1, 0.5, 0.6], np.float32), np.array([0.3], np.float32)
    tau = P.fit_threshold(pos, neg, "f1")  # F1 is best with every positive in (tau below 0.1)
    assert tau.dtype == np.float32
    assert np.all(pos > tau), "a float64 tau rounded onto float32 0.1 used to drop that example"
    assert np.all(np.asarray(P.concept_members(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[0],
                                               tau)) == [True, False])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_fit_threshold_separates_adjacent_scores_in_their_dtype(dtype):
    lo = dtype(0.25)
    hi = np.nextafter(lo, dtype(1))  # no value of this dtype lies between the two
    tau = P.fit_threshold(np.array([hi]), np.array([lo]))
    assert tau.dtype == dtype
    assert hi > tau and not lo > tau  # balanced accuracy 1.0, not 0.5


@pytest.mark.parametrize("seed", range(3))
def test_fit_threshold_score_is_what_its_tau_achieves(seed):
    rng = np.random.default_rng(seed)
    # Many near-ties in float32: the counted score must be the score of "sim > tau" itself.
    pos = (0.5 + rng.integers(0, 20, 50) * 1e-8).astype(np.float32)
    neg = (0.5 + rng.integers(0, 20, 60) * 1e-8).astype(np.float32)
    tau = P.fit_threshold(pos, neg)
    best = max(0.5 * (np.mean(pos > t) + np.mean(neg <= t)) for t in np.concatenate([pos, neg, [-1]]))
    assert 0.5 * (np.mean(pos > tau) + np.mean(neg <= tau)) == pytest.approx(best)


def clusters(seed, n, k=3, dim=16, noise=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 3
    labels = np.arange(n) % k
    return centres[labels] + noise * rng.normal(size=(n, dim)), labels


def test_identification_score_separable_and_chance():
    xtr, ytr = clusters(0, 60)
    xte, yte = clusters(0, 30)  # same centres (same seed), new noise draws differ by n
    res = P.identification_score(xtr, ytr, xte + 0.01, yte)
    assert res.score == pytest.approx(1.0) and res.f1 == pytest.approx(1.0)
    assert res.auroc_per_value.shape == (3,) and res.prototypes.shape == (3, 16)
    rng = np.random.default_rng(1)
    chance = P.identification_score(rng.normal(size=(600, 16)), np.arange(600) % 3,
                                    rng.normal(size=(600, 16)), rng.permutation(np.arange(600) % 3))
    assert 0.4 < chance.score < 0.6


def test_identification_score_errors():
    x, y = clusters(0, 30)
    with pytest.raises(ValueError, match="concept value 2 has no examples in the test split"):
        P.identification_score(x, y, x[y != 2], y[y != 2], num_values=3)
    with pytest.raises(ValueError, match="at least 2 values"):
        P.identification_score(x, np.zeros(30, int), x, np.zeros(30, int))
    with pytest.raises(ValueError, match="feature dims"):
        P.identification_score(x, y, x[:, :4], y)
