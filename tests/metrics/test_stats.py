"""The paired permutation test against an exhaustive enumeration of sign flips."""

import itertools

import jax
import numpy as np
import pytest

from mrepe_jax.metrics.stats import mean_std, paired_permutation_test


def exact_p(a, b):
    d = np.asarray(a) - np.asarray(b)
    obs = abs(d.mean())
    flips = [abs((np.asarray(s) * d).mean()) for s in itertools.product([-1, 1], repeat=len(d))]
    return np.mean(np.asarray(flips) >= obs - 1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.4, 1.5])
def test_matches_the_exact_sign_flip_distribution(shift):
    rng = np.random.default_rng(int(shift * 10))
    a = rng.normal(size=10)
    b = a - shift + rng.normal(size=10) * 0.5
    p = paired_permutation_test(a, b, jax.random.key(0), num_permutations=20_000)
    assert abs(p - exact_p(a, b)) < 0.015, (p, exact_p(a, b))


@pytest.mark.parametrize("n", [1, 99, 999])
def test_a_maximal_effect_gives_the_floor_one_over_one_plus_n_never_zero(n):
    """Every difference positive (N = 64): only the all-equal sign draws (2 in 2**64) reach the
    observed mean, so no resample is as extreme and p is exactly the floor 1 / (1 + n) (the
    observed assignment counts as a draw), never 0: equal to it up to float32 rounding, so
    neither 0 (a dropped +1) nor 2 / (1 + n) passes."""
    a = np.arange(64.0) + 10.0
    p = paired_permutation_test(a, np.zeros(64), jax.random.key(3), num_permutations=n)
    assert p == pytest.approx(1 / (1 + n), rel=1e-6) and p > 0  # float32 division: 1e-6
    flipped = paired_permutation_test(np.zeros(64), a, jax.random.key(4), num_permutations=n)
    assert flipped == pytest.approx(1 / (1 + n), rel=1e-6)  # two-sided: the sign of the effect does not matter


def test_identical_samples_give_p_one_and_errors_are_clear():
    a = np.arange(6.0)
    assert paired_permutation_test(a, a, jax.random.key(1), 500) == 1.0
    with pytest.raises(ValueError, match=r"two \[N\] arrays with N >= 1, got \(0,\)"):
        paired_permutation_test([], [], jax.random.key(0))
    with pytest.raises(ValueError, match="non-finite"):
        paired_permutation_test([1.0, np.nan], [0.0, 0.0], jax.random.key(0))
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)


def test_wilson_interval_matches_scipy_and_stays_in_range():
    import scipy.stats

    from mrepe_jax.metrics.stats import wilson_interval

    for k, n in [(8, 10), (0, 10), (10, 10), (1, 3), (57, 200)]:
        ref = scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
        np.testing.assert_allclose(wilson_interval(k, n), (ref.low, ref.high), atol=1e-12)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(3, 2)
