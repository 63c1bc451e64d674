"""The ToyWorld identification stage compiles one sweep program per tower and site point, however
many layers and concept families it sweeps (issue 8: compile once)."""

import jax
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
