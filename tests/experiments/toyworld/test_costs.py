"""Table 5's training ratios and Table 6's ablation rows, on hand-made stage results."""

import numpy as np
import pytest

from mrepe_jax.experiments.toyworld.efficiency import training_ratios
from mrepe_jax.experiments.toyworld.report.costs import ablation_scores


def _results():
    towers = {t: {"seconds": {"mrepe_fit": f, "ft_fit": 2 * f}} for t, f in (("vision", 1.0), ("text", 0.5))}
    ablation = {v: {"vas": [0.5, 0.7], "scr": [0.2, 0.4]} for v in
                ("full", "no_direct", "no_attention", "no_identification")}
    ablation["no_direct"] = {"vas": [0.1, 0.1], "scr": [0.0, 0.2]}
    return {"training": {"trained_in_seconds": 20.0},
            "alignment": {"map_fit": {"seconds": 6.0, "restored": False}, "seeds": [0, 1, 2],
                          "cmc": {"A-B": {"baseline": 0.5, "mrepe": [0.6, 0.8, 0.7]},
                                  "A-C": {"baseline": 0.7, "mrepe": [0.8, 0.6, 0.7]}}},
            "control": {"towers": towers},
            "safety": {"seeds": [0, 1], "towers": {"vision": {"ablation": ablation},
                                                   "text": {"ablation": ablation}}}}


def test_training_ratios_add_one_seed_of_maps_and_every_towers_fits():
    r = training_ratios(_results())
    assert r["mrepe_seconds"] == pytest.approx(6.0 / 3 + 1.5)
    assert r["mrepe"] == pytest.approx((20 + 3.5) / 20) and r["ft"] == pytest.approx((20 + 3.0) / 20)


def test_ablation_rows_average_towers_and_only_alignment_changes_cmc():
    s = ablation_scores(_results())
    # Three map seeds, two safety seeds: every safety seed gets the maps' mean CMC (0.7).
    np.testing.assert_allclose(s["full"]["cmc"], [0.7, 0.7])
    np.testing.assert_allclose(s["no_alignment"]["cmc"], [0.6, 0.6])
    assert s["no_alignment"]["vas"] == s["full"]["vas"]
    np.testing.assert_allclose(s["full"]["overall"], [(0.7 + 0.5 + 0.2) / 3, (0.7 + 0.7 + 0.4) / 3])
    np.testing.assert_allclose(s["no_direct"]["vas"], [0.1, 0.1])
