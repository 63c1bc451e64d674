"""Pooling the per-seed results of retrained CLIPs: per-seed lists concatenate, scalars average,
p-values take the largest, settings and per-model pictures stay once."""

import pytest

from configs.toyworld import get_config
from mrepe_jax.experiments.toyworld.paper_protocol import merge, seed_config


def _seed(s):
    return {"control": {"alphas": [0.1, 1.0], "seeds": [s],
                        "towers": {"vision": {"direct": {"success": {"0.1": [0.1 * s]}},
                                              "member_fraction": 0.2 * s}}},
            "safety": {"towers": {"vision": {"scr": {"baseline": 0.5 + s, "mrepe": [s], "p_value": 0.01 * s},
                                             "ar": {"metrics": ["scr", "vas"]}}},
                       "reduced": [None]},
            "world": {"spurious_pair": ["colour", "shape"], "distractors": 2},
            "causal": {"layer": s}, "training": {"final_loss": None, "steps": 10}}


def test_pooling_rules():
    pooled = merge([_seed(1), _seed(2), _seed(3)])
    assert pooled["control"]["alphas"] == [0.1, 1.0]  # a setting, kept once
    assert pooled["control"]["seeds"] == [1, 2, 3]
    assert pooled["control"]["towers"]["vision"]["direct"]["success"]["0.1"] == pytest.approx([0.1, 0.2, 0.3])
    assert pooled["control"]["towers"]["vision"]["member_fraction"] == pytest.approx(0.4)
    scr = pooled["safety"]["towers"]["vision"]["scr"]
    assert scr["baseline"] == pytest.approx(2.5) and scr["mrepe"] == [1, 2, 3]
    assert scr["p_value"] == pytest.approx(0.03)  # the largest: significant on every model
    assert pooled["safety"]["towers"]["vision"]["ar"]["metrics"] == ["scr", "vas"]
    assert pooled["safety"]["reduced"] == [None, None, None]
    assert pooled["world"] == {"spurious_pair": ["colour", "shape"], "distractors": 2}
    assert pooled["causal"] == {"layer": 1}  # the first model's picture
    assert pooled["training"] == {"final_loss": None, "steps": 10}
    assert isinstance(pooled["training"]["steps"], int)  # equal on every model: kept, not averaged
    assert merge([_seed(4)]) == _seed(4)


def test_causal_only_on_the_first_seed_and_missing_figures_are_named():
    later = _seed(2)
    del later["causal"]
    assert merge([_seed(1), later])["causal"] == {"layer": 1}
    del later["control"]["towers"]["vision"]["direct"]
    with pytest.raises(ValueError, match=r"\['direct'\] missing from some seed's results under 'vision'"):
        merge([_seed(1), later])


def test_seed_config_seeds_the_clip_and_everything_fitted_on_it():
    c = get_config("paper")
    assert tuple(c.clip_seeds) == (0, 1, 2, 3, 4) and c.identify.bootstrap_resamples == 1000
    s = seed_config(c, 3)
    assert (s.train.seed, tuple(s.align.seeds), tuple(s.control.seeds)) == (3, (3,), (3,))
    assert c.train.seed == 0  # the original is untouched


def test_a_models_own_feature_indices_are_the_first_seeds():
    def seed(s, j):
        return {"features": {"per_value": {"colour": {"red": {"feature": j, "auroc": 0.5 + 0.1 * s,
                                                              "probe_features": [j, j + 1]}}},
                             "feature_pages": [{"feature": j}]}}

    pooled = merge([seed(1, 7), seed(2, 30)])["features"]
    red = pooled["per_value"]["colour"]["red"]
    assert red["feature"] == 7 and red["probe_features"] == [7, 8]  # not 18.5, not [7, 8, 30, 31]
    assert red["auroc"] == pytest.approx(0.65)
    assert pooled["feature_pages"] == [{"feature": 7}]
