"""The safety stage's pure parts: the Overall score's per-input shares and the unidentified
(random) intervention of Table 6."""

import numpy as np
import pytest

from mrepe_jax.experiments.toyworld.safety import _unidentified, overall_contributions


def test_overall_contributions_average_to_the_overall_score():
    rng = np.random.default_rng(0)
    scr = np.where(rng.random(40) < 0.3, rng.integers(0, 2, 40), np.nan)  # defined on 30% of inputs
    vas = np.where(rng.random(40) < 0.8, rng.random(40), np.nan)
    ar = rng.integers(0, 2, 40).astype(float)
    score = np.mean([np.nanmean(scr), np.nanmean(vas), np.mean(ar)])
    assert overall_contributions([scr, vas, ar]).mean() == pytest.approx(score, rel=1e-12)
    with pytest.raises(ValueError, match=r"no inputs in its set \(counts \[0, 40\]\)"):
        overall_contributions([np.full(40, np.nan), ar])


def test_without_identification_keeps_the_norm_and_the_number_of_boosted_tokens():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=16).astype(np.float32)
    bias = np.where(rng.random((5, 9)) < 0.3, 8.0, 0.0).astype(np.float32)
    direction, shuffled = _unidentified(delta, bias, seed=3)
    assert np.linalg.norm(direction) == pytest.approx(np.linalg.norm(delta), rel=1e-5)
    assert abs(np.dot(direction, delta)) < 0.9 * np.linalg.norm(delta) ** 2
    np.testing.assert_array_equal((shuffled != 0).sum(1), (bias != 0).sum(1))
    np.testing.assert_array_equal(np.sort(shuffled, 1), np.sort(bias, 1))
    assert not np.array_equal(shuffled, bias)
