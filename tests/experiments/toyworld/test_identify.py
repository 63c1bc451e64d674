"""The ToyWorld identification stage compiles one sweep program per tower and site point, however
many layers and concept families it sweeps (issue 8: compile once)."""

import jax
import numpy as np
import pytest

from configs import toyworld as toyworld_config
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.experiments.toyworld import identify as toyworld_identify
from mrepe_jax.experiments.toyworld.pipeline import train_config
from mrepe_jax.reading import causal_programs
from mrepe_jax.train import toyclip


@pytest.mark.slow  # compiles the stage's sweeps from scratch (~15 s): `make test-slow`
def test_causal_stage_compiles_one_sweep_program_per_tower_and_point(tmp_path):
    config = toyworld_config.get_config("tiny")
    cfg = train_config(config)
    cfg.num_layers = 2  # two layers: one program must serve both
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    model = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    params = toyclip.init_state(model, world, cfg).params
    traced, _ = causal_programs.sweeps(None)
    traced.clear_cache()
    causal_programs.attribution_jit.clear_cache()
    out = toyworld_identify.causal_analysis(model, params, world, num_pairs=2, workdir=tmp_path,
                                            towers=("vision", "text"), families=("colour", "shape"))
    assert set(out) == {"vision", "text"} and set(out["vision"]) == {"colour", "shape"}
    # (tower, point) pairs swept: vision resid_pre, vision attn.z (per head), text resid_pre.
    assert traced._cache_size() == 3
    assert causal_programs.attribution_jit._cache_size() == 2  # vision and text resid_pre
    assert jax.tree.leaves(params)  # the stage ran on real params, not an empty tree


def test_identify_keeps_every_sites_test_auroc_beside_the_best_sites():
    """``direction_auroc_by_site`` / ``prototype_auroc_by_site`` hold the test AUROC at every
    candidate site in layer order; Table 1's figures are their values at the chosen sites."""
    config = toyworld_config.get_config("tiny")
    cfg = train_config(config)
    cfg.num_layers = 2
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    model = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))  # only its site names are read
    rng = np.random.default_rng(0)
    sizes = {"train": 80, "validation": 60, "test": 60}
    labels = {s: {f: np.arange(n) % len(v) for f, v in world.families.items()} for s, n in sizes.items()}
    reps = {}
    for s, n in sizes.items():
        reps[s] = {}
        for tower in toyworld_identify.TOWERS:
            sites = toyworld_identify.candidate_sites(model, tower)
            # Colour grows more readable with depth: a signal of strength k at the k-th site.
            reps[s][tower] = {site: rng.normal(size=(n, 8)) + k * np.eye(8)[labels[s]["colour"]]
                              for k, site in enumerate(sites)}
    out = toyworld_identify.identify(model, world, reps, labels)
    for tower in toyworld_identify.TOWERS:
        sites = list(toyworld_identify.candidate_sites(model, tower))
        assert sites[:2] == [f"{tower}.layers.0.resid_post", f"{tower}.layers.1.resid_post"]
        for family in world.families:
            direction = out["direction_auroc_by_site"][tower][family]
            prototype = out["prototype_auroc_by_site"][tower][family]
            assert list(direction) == list(prototype) == sites
            assert direction[out["direction_site"][tower][family]] == out["direction_auroc"][tower][family]
            assert prototype[out["mrepe_site"][tower][family]] == out["mrepe"][tower][family]
            assert prototype[f"{tower}.proj"] == out["baseline"][tower][family]
        colour = out["direction_auroc_by_site"][tower]["colour"]
        assert colour[sites[0]] < 0.7 < 0.95 < colour[sites[-1]]  # no signal at the first, strong at the last
