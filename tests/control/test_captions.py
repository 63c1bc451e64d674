"""Steered captions: one program for any number of interventions, the unedited decode when the
edit is zero, edits at language-model sites too, and clear errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.control.captions import _steered, steered_captions
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.edits import Add
from mrepe_jax.train import captioner
from tests.train.test_captioner import make_clip, tiny_cfg


def qformer_add(p):
    return {"qformer.layers.0.resid_post": Add(p["delta"], p["alpha"])}


def lm_add(p):
    return {"lm.layers.0.resid_post": Add(p["delta"], p["alpha"])}


@pytest.fixture(scope="module")
def setup():
    # Untrained: these are the mechanics (what the edits do to captions is
    # tests/experiments/toyworld/test_captioning.py's, on a trained captioner).
    world = ToyWorld(ToyWorldConfig())
    clip, clip_params = make_clip(world, width=32)
    cfg = tiny_cfg(qformer_hidden_size=32, lm_hidden_size=32, num_query_tokens=4)
    model = captioner.ToyCaptioner(captioner.model_config(world, clip, cfg))
    params = captioner.init_state(model, world, cfg).params
    pixels = world.batch(range(6), split="test")["image"]
    embeds = captioner.vision_states(clip, clip_params, pixels)
    return world, clip, clip_params, model, params, pixels, embeds


def test_zero_edits_give_the_unedited_captions_in_one_program(setup):
    world, clip, clip_params, model, params, pixels, embeds = setup
    plain = captioner.generate_captions(model, params, clip, clip_params, pixels, 12)
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(5, 32)).astype(np.float32)
    alphas = np.array([0.0, 3.0, 0.0, 3.0, 0.0], np.float32)
    ids = steered_captions(model, params, embeds, qformer_add, {"delta": deltas, "alpha": alphas}, 12,
                           chunk=2)
    assert ids.shape == (5, 6, 12)
    for k in (0, 2, 4):
        np.testing.assert_array_equal(ids[k], plain)
    assert any((ids[k] != plain).any() for k in (1, 3))  # a large random edit changes words
    # Chunks of 2 (padded), of 64 and of exactly 5: the same captions; one program per chunk size.
    before = _steered._cache_size()
    again = steered_captions(model, params, embeds, qformer_add, {"delta": deltas[:3], "alpha": alphas[:3]},
                             12, chunk=2)
    np.testing.assert_array_equal(again, ids[:3])
    assert _steered._cache_size() == before
    np.testing.assert_array_equal(
        steered_captions(model, params, embeds, qformer_add, {"delta": deltas, "alpha": alphas}, 12), ids)


def test_language_model_edits_apply_at_every_step(setup):
    world, clip, clip_params, model, params, pixels, embeds = setup
    plain = captioner.generate_captions(model, params, clip, clip_params, pixels, 12)
    word = model.config.text_config.hidden_size
    rng = np.random.default_rng(1)
    ids = steered_captions(model, params, embeds, lm_add,
                           {"delta": jnp.asarray(rng.normal(size=(2, word)), jnp.float32),
                            "alpha": jnp.asarray([0.0, 5.0])}, 12)
    np.testing.assert_array_equal(ids[0], plain)
    assert (ids[1] != plain).any()


def test_bad_interventions_are_named(setup):
    world, clip, clip_params, model, params, pixels, embeds = setup
    with pytest.raises(ValueError, match=r"share one leading axis \(P\), got sizes \[2, 3\]"):
        steered_captions(model, params, embeds, qformer_add,
                         {"delta": np.zeros((2, 32), np.float32), "alpha": np.zeros(3, np.float32)}, 4)
    with pytest.raises(ValueError, match=r"max_new_tokens must be >= 1"):
        steered_captions(model, params, embeds, qformer_add,
                         {"delta": np.zeros((2, 32), np.float32), "alpha": np.zeros(2, np.float32)}, 0)
    with pytest.raises(ValueError, match=r"unknown site.*qformer.layers.9.resid_post|qformer.layers.9"):
        steered_captions(model, params, embeds,
                         lambda p: {"qformer.layers.9.resid_post": Add(p["delta"], p["alpha"])},
                         {"delta": np.zeros((1, 32), np.float32), "alpha": np.zeros(1, np.float32)}, 4)
