"""``Blip2Stages``: BLIP-2 from the EVA output on equals the whole model, stage by stage, and eq 2's
sweeps run over its Q-Former and OPT towers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.edits import Add, Along, Replace
from mrepe_jax.models.blip2 import default_prompt
from mrepe_jax.models.blip2 import model as blip2
from mrepe_jax.models.blip2.staging import image_embeds, stages_of, word_metric
from mrepe_jax.reading.causal import attribution_effect, causal_effect
from tests.models.blip2.test_parity import BOS, NQ, converted, nhwc

jax.config.update("jax_default_matmul_precision", "highest")
ATOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    model, params = converted("xattn2_opt2")
    rng = np.random.default_rng(0)
    pixels = nhwc(rng.normal(size=(3, 3, 16, 16)).astype(np.float32))
    return model, params, pixels


def _full(model, params, pixels, prompt_tail=(BOS,), edits=None, capture=()):
    ids = np.tile(np.asarray([model.config.image_token_index] * NQ + list(prompt_tail), np.int32), (len(pixels), 1))
    return model.apply({"params": params}, jnp.asarray(pixels), jnp.asarray(ids), edits=edits, capture=capture)


@pytest.mark.parametrize("tail", [None, (BOS, 5, 9)])
def test_each_tower_reads_out_the_full_models_last_prompt_state(setup, tail):
    model, params, pixels = setup
    stages = stages_of(model, tail)
    out, _ = _full(model, params, pixels, tail or (BOS,))
    want = out["language_model_outputs"]["last_hidden_state"][:, -1]
    emb = image_embeds(model, params, pixels)
    got_q, _ = stages.apply({"params": params}, "qformer", emb, method="encode")
    feats, _ = stages.apply({"params": params}, emb, method="features")
    got_lm, _ = stages.apply({"params": params}, "lm", feats, method="encode")
    np.testing.assert_allclose(got_q, want, atol=ATOL)
    np.testing.assert_allclose(got_lm, want, atol=ATOL)
    # The readout's logit difference is that of the full model's logits at the last position.
    metric = word_metric(params, [3, 4, 5], [6, 7, 8])
    logits = out["logits"][:, -1]
    np.testing.assert_allclose(metric(got_q), logits[np.arange(3), [3, 4, 5]] - logits[np.arange(3), [6, 7, 8]],
                               atol=1e-4)


def test_edits_reach_the_staged_towers_as_the_full_model(setup):
    model, params, pixels = setup
    stages = stages_of(model)
    edits = {"qformer.layers.1.resid_post": Add(jnp.ones(32), 0.5), "lm.layers.0.mlp_out": Add(jnp.ones(40), -0.3)}
    out, acts = _full(model, params, pixels, edits=edits, capture=("lm.layers.1.resid_pre",))
    emb = image_embeds(model, params, pixels)
    got, got_acts = stages.apply({"params": params}, "qformer", emb, edits=edits,
                                 capture=("lm.layers.1.resid_pre",), method="encode")
    np.testing.assert_allclose(got, out["language_model_outputs"]["last_hidden_state"][:, -1], atol=ATOL)
    np.testing.assert_allclose(got_acts["lm.layers.1.resid_pre"], acts["lm.layers.1.resid_pre"], atol=ATOL)


def test_generation_from_image_embeds_equals_blip2_generate(setup):
    model, params, pixels = setup
    stages = stages_of(model)
    want = blip2.generate(model, params, pixels, max_new_tokens=6, eos_token_id=())
    ids = default_prompt(model.config, len(pixels))
    got = jax.jit(lambda p, e: blip2.decode(stages, p, e, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32),
                                            max_new_tokens=6, eos_token_id=(), pad_token_id=1))(
        params, image_embeds(model, params, pixels))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("tower", ["qformer", "lm"])
def test_exact_patching_equals_one_patched_forward_per_cell(setup, tower):
    """Each swept cell is the metric of one forward with that (layer, position) replaced by the
    source run's value, minus the base run's; attribution has the same layout and base run."""
    model, params, pixels = setup
    stages = stages_of(model)
    emb = image_embeds(model, params, pixels)
    inputs = emb if tower == "qformer" else stages.apply({"params": params}, emb, method="features")[0]
    clean, corrupt = inputs[:2], inputs[1:3]
    metric = word_metric(params, [3, 4], [6, 7])
    exact = causal_effect(stages, {"params": params}, tower, clean, corrupt, metric)
    attrib = attribution_effect(stages, {"params": params}, tower, clean, corrupt, metric)
    n_layers = stages.tower_layers()[tower]
    n_pos = NQ if tower == "qformer" else NQ + 1
    assert np.shape(exact.effects) == np.shape(attrib.effects) == (n_layers, n_pos)
    np.testing.assert_allclose(attrib.base, exact.base, atol=1e-4)
    assert np.all(np.isfinite(attrib.effects))
    base, _ = stages.apply({"params": params}, tower, clean, method="encode")
    for layer, pos in ((1, 2), (0, n_pos - 1)):
        site = f"{tower}.layers.{layer}.resid_pre"
        _, src = stages.apply({"params": params}, tower, corrupt, capture=(site,), method="encode")
        where = np.arange(n_pos) == pos
        patched, _ = stages.apply({"params": params}, tower, clean, method="encode",
                                  edits={site: Replace(src[site], where=Along(jnp.asarray(where), ("token",)))})
        np.testing.assert_allclose(exact.per_example[:, layer, pos], metric(patched) - metric(base), atol=1e-4)
    if tower == "lm":  # OPT reads nothing but its stream: all of layer 0's input is the source run
        site = "lm.layers.0.resid_pre"
        _, src = stages.apply({"params": params}, tower, corrupt, capture=(site,), method="encode")
        patched, _ = stages.apply({"params": params}, tower, clean, edits={site: Replace(src[site])}, method="encode")
        np.testing.assert_allclose(metric(patched), exact.target, atol=1e-4)


def test_bad_towers_and_prompts_are_named(setup):
    model, params, pixels = setup
    emb = image_embeds(model, params, pixels)
    with pytest.raises(ValueError, match="unknown tower 'vision'.*image_embeds"):
        stages_of(model).apply({"params": params}, "vision", emb, method="encode")
    with pytest.raises(ValueError, match=r"prompt \(\) must be a non-empty tuple"):
        stages_of(model, ()).apply({"params": params}, "qformer", emb, method="encode")
    with pytest.raises(ValueError, match="takes no attention_mask"):
        stages_of(model).apply({"params": params}, "qformer", emb, np.ones((3, 5)), method="encode")
