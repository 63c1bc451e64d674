"""CLAP's site table: every site captured with its documented layout (windowed attention included),
edits that change what follows them, eq 7's ``AttnBias`` inside a window, the staged towers
(``embed`` / ``run_layers`` / ``readout``) and the errors for sites that do not exist."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax import sites
from mrepe_jax.edits import Add, AttnBias, Replace, along
from mrepe_jax.layouts import site_axes
from mrepe_jax.models.clap import from_torch_model
from mrepe_jax.models.clap.swin import shifted_window_mask
from tests.models.clap.hf_tiny import random_inputs, tiny_hf_clap

NAME = "unfused"  # window 5 over 12x12 then 6x6 grids: padded windows, a shifted block in stage 1


@functools.cache
def setup():
    model, params = from_torch_model(tiny_hf_clap(NAME))
    return model, params, random_inputs(NAME)


@functools.cache
def audio_program(capture=()):
    """A jitted ``encode('audio')`` taking edits as arguments (one compile per capture set)."""
    model, params, _ = setup()
    return jax.jit(lambda f, edits: model.apply({"params": params}, "audio", f, method="encode",
                                                edits=edits, capture=capture))


def test_every_site_is_captured_with_its_documented_layout():
    model, params, (features, is_longer, ids, mask) = setup()
    _, acts = jax.jit(lambda p: model.apply({"params": p}, features, ids, mask, capture=("*",)))(params)
    assert set(acts) == set(model.site_names())
    assert len(model.site_names()) == 3 + (1 + 2) * len(sites.LAYER_POINTS) + 3 + 2 * len(sites.LAYER_POINTS)
    b = features.shape[0]
    # Stage 0: 12x12 tokens of width 8, 2 heads, window 5 -> the grid padded to 15x15, 9 windows of 25.
    s0 = "audio.stages.0.blocks.0"
    assert acts["audio.embed"].shape == acts[f"{s0}.resid_pre"].shape == (b, 144, 8)
    assert acts[f"{s0}.attn.q"].shape == acts[f"{s0}.attn.z"].shape == (b, 9, 25, 2, 4)
    assert acts[f"{s0}.attn.logits"].shape == acts[f"{s0}.attn.pattern"].shape == (b, 9, 2, 25, 25)
    assert acts[f"{s0}.mlp.hidden"].shape == (b, 144, 16)
    # Stage 1: 6x6 tokens of width 16, 4 heads -> padded to 10x10, 4 windows.
    s1 = "audio.stages.1.blocks.1"
    assert acts[f"{s1}.attn_out"].shape == acts[f"{s1}.resid_post"].shape == (b, 36, 16)
    assert acts[f"{s1}.attn.k"].shape == (b, 4, 25, 4, 4)
    assert acts[f"{s1}.attn.pattern"].shape == (b, 4, 4, 25, 25)
    np.testing.assert_allclose(np.asarray(acts[f"{s1}.attn.pattern"]).sum(-1), 1.0, atol=1e-5)
    assert acts["audio.pooled"].shape == (b, 16) and acts["audio.proj"].shape == (b, 8)
    assert acts["text.layers.1.attn.logits"].shape == (b, 2, 8, 8)
    assert acts["text.layers.1.mlp.hidden"].shape == (b, 8, 40)
    assert acts["text.pooled"].shape == (b, 16) and acts["text.proj"].shape == (b, 8)
    assert site_axes(f"{s1}.attn.q") == ("batch", "window", "token", "head", "feature")
    assert site_axes(f"{s1}.attn.logits") == ("batch", "window", "head", "query", "key")
    assert site_axes(f"{s1}.resid_mid") == ("batch", "token", "feature")
    # The residual stream obeys resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out.
    np.testing.assert_allclose(acts[f"{s1}.resid_mid"], acts[f"{s1}.resid_pre"] + acts[f"{s1}.attn_out"], atol=1e-6)
    np.testing.assert_allclose(acts[f"{s1}.resid_post"], acts[f"{s1}.resid_mid"] + acts[f"{s1}.mlp_out"], atol=1e-6)


def test_an_edit_at_any_audio_point_changes_the_embedding_and_a_zero_edit_does_not():
    _, _, (features, *_) = setup()
    clean, _ = audio_program()(features, {})
    # Not constant vectors: LayerNorm removes a shift shared by every feature.
    for name, edit in (("audio.stages.1.blocks.1.resid_mid", Add(jnp.linspace(-1, 1, 16), alpha=0.5)),
                       ("audio.stages.0.blocks.0.attn.v", Add(jnp.linspace(-1, 1, 4), alpha=0.5)),
                       ("audio.stages.1.blocks.0.mlp.hidden", Replace(0.0))):
        edited, _ = audio_program()(features, {name: edit})
        assert not np.allclose(edited, clean, atol=1e-4), name
    zero, _ = audio_program()(features, {"audio.stages.1.blocks.1.resid_mid": Add(jnp.zeros(16))})
    np.testing.assert_allclose(zero, clean, atol=1e-6)


def test_attn_bias_at_window_logits_removes_a_key_in_one_window_only():
    _, _, (features, *_) = setup()
    site = "audio.stages.1.blocks.1.attn"
    program = audio_program((f"{site}.pattern",))
    _, clean = program(features, {})
    mask = np.zeros((4, 25), np.float32)
    mask[2, 7] = -np.inf  # window 2, key 7
    _, acts = program(features, {f"{site}.logits": AttnBias(along(mask, "window", "key"))})
    pattern, before = np.asarray(acts[f"{site}.pattern"]), np.asarray(clean[f"{site}.pattern"])
    assert (pattern[:, 2, :, :, 7] == 0).all() and before[:, 2, :, :, 7].max() > 0.01
    np.testing.assert_allclose(pattern[:, [0, 1, 3]], before[:, [0, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)


def test_edits_vmap_over_their_arrays_in_one_program():
    _, _, (features, *_) = setup()
    alphas = jnp.array([0.0, 0.5, 1.0])
    direction = jnp.linspace(-1, 1, 16)
    run = jax.vmap(lambda a: audio_program()(features, {"audio.stages.1.blocks.0.resid_post":
                                                        Add(direction, alpha=a)})[0])
    out = run(alphas)
    clean, _ = audio_program()(features, {})
    np.testing.assert_allclose(out[0], clean, atol=1e-6)
    for i, a in enumerate(alphas):
        one, _ = audio_program()(features, {"audio.stages.1.blocks.0.resid_post": Add(direction, alpha=a)})
        np.testing.assert_allclose(out[i], one, atol=1e-5)


def test_staged_towers_compose_to_encode_across_a_stage_boundary():
    model, params, (features, is_longer, ids, mask) = setup()

    def staged(p, f, ids, mask):
        call = functools.partial(model.apply, {"params": p})
        h, _ = call("audio", f, method="embed")
        h, _ = call("audio", h, 0, 2, method="run_layers")  # stage 0's block, merging, stage 1's first
        assert h.shape == (f.shape[0], 36, 16)
        h, _ = call("audio", h, 2, 3, method="run_layers")
        audio, _ = call("audio", h, method="readout")
        mask_t, _ = call("text", ids, mask, method="layer_mask")
        t, _ = call("text", ids, method="embed")
        t, _ = call("text", t, 0, 1, mask_t, method="run_layers")
        t, _ = call("text", t, 1, None, mask_t, method="run_layers")
        text, _ = call("text", t, ids, method="readout")
        return audio, text

    def whole(p, f, ids, mask):
        return (model.apply({"params": p}, "audio", f, method="encode")[0],
                model.apply({"params": p}, "text", ids, mask, method="encode")[0])

    for a, b in zip(jax.jit(staged)(params, features, ids, mask), jax.jit(whole)(params, features, ids, mask)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert model.apply({"params": params}, "text", ids, method="readout_index")[0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="pools the mean of all its final tokens"):
        model.apply({"params": params}, "audio", features, method="readout_index")


def test_unknown_sites_say_what_the_tower_has():
    model, params, (features, is_longer, ids, mask) = setup()
    known = model.site_names()
    with pytest.raises(ValueError, match=r"'audio\.stages\.2\.blocks\.0\.resid_pre' in edits: audio has 2 stages"):
        sites.validate_edits({"audio.stages.2.blocks.0.resid_pre": Add(1.0)}, known)
    with pytest.raises(ValueError, match=r"'audio\.stages\.0\.blocks\.1\.resid_pre' in edits: audio stage 0 has "
                                         r"1 blocks \(0-0\)"):
        sites.validate_edits({"audio.stages.0.blocks.1.resid_pre": Add(1.0)}, known)
    with pytest.raises(ValueError, match=r"did you mean audio\.stages\.1\.blocks\.1\.attn\.pattern"):
        sites.resolve_capture(("audio.stages.1.blocks.1.attn.patern",), known)
    with pytest.raises(ValueError, match="AttnBias is an attention-logit edit"):
        sites.validate_edits({"audio.stages.1.blocks.1.attn.pattern": AttnBias(0.0)}, known)


def test_the_shift_mask_separates_the_regions_the_roll_brings_together():
    """A 10x10 grid (6x6 padded to whole 5-windows), rolled by 2: only the top-left window holds
    one region; the others mix 2 or 4, and their tokens never attend across them."""
    mask = shifted_window_mask(10, 10, 5, 2)
    assert mask.shape == (4, 25, 25) and set(np.unique(mask)) == {0.0, -100.0}
    assert (mask[0] == 0).all() and (mask[1:] != 0).any(axis=(1, 2)).all()
    np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))
    assert (np.diagonal(mask, axis1=1, axis2=2) == 0).all()
