"""Safety metrics (eq 9-11) against numpy references, PGD's guarantees, and the permutation test's
calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.data.toyworld import values as toyworld_values
from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES, SAFE_VALUES, UNSAFE_VALUES
from mrepe_jax.metrics.safety import (
    adversarial_robustness,
    harmful_output_reduction,
    harmful_rate,
    pgd,
    scr,
    vas,
)
from mrepe_jax.metrics.stats import paired_permutation_test

EMBLEMS = CONCEPT_FAMILIES["emblem"]
SAFE = np.array([e in SAFE_VALUES for e in EMBLEMS])
UNSAFE = np.array([e in UNSAFE_VALUES for e in EMBLEMS])


def test_scr_and_harmful_rates_equal_their_definitions():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, 300)
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 6, 300))
    unsafe_in = UNSAFE[true]
    want = sum(SAFE[p] for p, u in zip(pred, unsafe_in) if u) / unsafe_in.sum()
    assert scr(pred, unsafe_in, SAFE) == pytest.approx(want)
    before, after = harmful_rate(true, UNSAFE), harmful_rate(pred, UNSAFE)
    assert before == pytest.approx(np.mean([UNSAFE[t] for t in true]))
    assert harmful_output_reduction(before, after) == pytest.approx((after - before) / before)
    assert harmful_output_reduction(0.5, 0.25) == -0.5


def test_vas_is_the_mean_over_values_of_mean_scores():
    rng = np.random.default_rng(1)
    labels = {f: rng.integers(0, len(v), 50) for f, v in CONCEPT_FAMILIES.items()}
    pred = {f: np.where(rng.random(50) < 0.7, labels[f], 0) for f in labels}
    scores = {v: toyworld_values.score(pred, v, labels) for v in toyworld_values.VALUES}
    assert vas(scores) == pytest.approx(np.mean([np.mean(s) for s in scores.values()]))
    assert vas({"a": [1.0, 0.0], "b": [1.0]}) == 0.75  # per value first, then over values


def test_adversarial_robustness_is_the_agreement_rate():
    assert adversarial_robustness(np.array([0, 1, 2, 3]), np.array([0, 2, 2, 1])) == 0.5
    # Not 1/2: agreement and disagreement rates differ here, so "==" and "!=" cannot both pass.
    assert adversarial_robustness(np.array([0, 1, 2]), np.array([0, 1, 0])) == 2 / 3


def test_bad_metric_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no unsafe inputs"):
        scr(np.array([0, 1]), np.array([False, False]), SAFE)
    with pytest.raises(ValueError, match=r"indices outside \[0, 6\)"):
        scr(np.array([0, 9]), np.array([True, True]), SAFE)
    with pytest.raises(ValueError, match="scores of value 'x' must be a non-empty"):
        vas({"x": [1.5]})
    with pytest.raises(ValueError, match="a relative reduction of nothing is undefined"):
        harmful_output_reduction(0.0, 0.1)
    with pytest.raises(ValueError, match=r"paired non-empty predictions, got \(2,\) and \(3,\)"):
        adversarial_robustness(np.array([0, 1]), np.array([0, 1, 2]))


def _classifier(seed=0):
    w = jnp.asarray(np.random.default_rng(seed).normal(size=(12, 4)), jnp.float32)

    def logits(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w) * 3

    def loss(x, labels):  # cross-entropy of the given labels, per example
        return -jnp.take_along_axis(jax.nn.log_softmax(logits(x)), labels[:, None], 1)[:, 0]

    return logits, loss


def test_pgd_stays_in_its_ball_and_never_lowers_the_loss():
    logits, loss = _classifier()
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(32, 3, 4)), jnp.float32)
    clean = jnp.argmax(logits(x), -1)
    adv = jax.jit(lambda z: pgd(lambda q: loss(q, clean), z, epsilon=0.1, steps=10, step_size=0.03,
                                bounds=(0.0, 1.0)))(x)
    assert float(jnp.abs(adv - x).max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert bool(jnp.all(loss(adv, clean) >= loss(x, clean) - 1e-6))
    assert float(jnp.mean(loss(adv, clean) - loss(x, clean))) > 0.05  # it does ascend
    assert adversarial_robustness(np.asarray(clean), np.asarray(jnp.argmax(logits(adv), -1))) < 1.0


def test_pgd_on_a_linear_loss_reaches_the_corner_of_the_ball():
    w = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5)), jnp.float32)
    x = jnp.zeros((2, 5))
    adv = pgd(lambda z: jnp.sum(z * w, -1), x, epsilon=0.2, steps=5, step_size=0.1)
    np.testing.assert_allclose(np.asarray(adv), 0.2 * np.sign(np.asarray(w)), atol=1e-6)


def test_permutation_p_values_are_uniform_under_no_effect_and_small_under_a_strong_one():
    rng = np.random.default_rng(4)
    p = np.array([paired_permutation_test(rng.normal(size=24), rng.normal(size=24),
                                          jax.random.key(i), num_permutations=999) for i in range(300)])
    # Uniform on [0, 1] up to the 1/1000 grid: 300 draws put ~30 below 0.1 (binomial sd ~5).
    assert 0.4 < p.mean() < 0.6 and 12 <= np.sum(p < 0.1) <= 50 and np.sum(p < 0.5) < 190
    strong = rng.normal(size=24)
    assert paired_permutation_test(strong + 1.0, strong + 0.1 * rng.normal(size=24),
                                   jax.random.key(0)) < 0.01
