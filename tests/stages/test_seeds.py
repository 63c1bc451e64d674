"""Run-seed offsets and per-seed train subsets, shared by every experiment."""

import numpy as np
import pytest

from mrepe_jax.stages import seeds


def test_offset_is_stride_times_the_run_seed_and_refuses_negative_seeds():
    assert [seeds.offset(k) for k in (0, 1, 3)] == [0, seeds.STRIDE, 3 * seeds.STRIDE]
    with pytest.raises(ValueError, match="config.seed must be >= 0.*got -1"):
        seeds.offset(-1)


def test_a_subset_depends_on_its_own_seed_only():
    subsets = seeds.train_subsets(50, 0.6, [3, 4, 3])
    for rows in subsets:
        assert len(rows) == 30 and len(set(rows.tolist())) == 30
        assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < 50
    np.testing.assert_array_equal(subsets[0], subsets[2])
    assert not np.array_equal(subsets[0], subsets[1])
    np.testing.assert_array_equal(seeds.train_subsets(50, 0.6, [4])[0], subsets[1])
    np.testing.assert_array_equal(seeds.train_subsets(7, 1.0, [9])[0], np.arange(7))


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_a_fraction_outside_zero_one_names_the_config_field(fraction):
    with pytest.raises(ValueError, match=rf"control.train_fraction must be in \(0, 1\], got {fraction}"):
        seeds.train_subsets(10, fraction, [0], "control.train_fraction")
