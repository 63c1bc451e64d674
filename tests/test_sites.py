"""The site table and capture matching."""

import pytest

from mrepe_jax import sites
from tests.models.tiny import tiny_clip


def test_site_table_covers_every_point():
    names = sites.tower_site_names("vision", 2)
    assert names[0] == "vision.embed" and names[-2:] == ("vision.pooled", "vision.proj")
    assert len(names) == 3 + 2 * len(sites.LAYER_POINTS)
    for point in ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.logits", "attn.pattern", "attn.z",
                  "attn_out", "resid_mid", "mlp.hidden", "mlp_out", "resid_post"):
        assert f"vision.layers.1.{point}" in names
    assert "qformer.layers.0.xattn.logits" in sites.tower_site_names("qformer", 1, cross_attention=True)


def test_hierarchical_towers_name_their_blocks_by_stage():
    from mrepe_jax.layouts import site_axes

    names = sites.hierarchical_site_names("audio", (1, 2))
    assert names[0] == "audio.embed" and names[-2:] == ("audio.pooled", "audio.proj")
    assert len(names) == 3 + 3 * len(sites.LAYER_POINTS)
    assert sites.block_site("audio", 1, 0, "attn.q") == "audio.stages.1.blocks.0.attn.q" in names
    assert "audio.stages.0.blocks.1.resid_pre" not in names
    assert site_axes("audio.stages.1.blocks.0.attn.z") == ("batch", "window", "token", "head", "feature")
    assert site_axes("audio.stages.1.blocks.0.attn.pattern") == ("batch", "window", "head", "query", "key")
    assert site_axes("audio.stages.1.blocks.0.mlp_out") == ("batch", "token", "feature")


def test_layer_sites_are_each_layer_or_block_in_forward_order():
    flat = sites.tower_site_names("text", 3) + sites.tower_site_names("vision", 12)
    assert sites.layer_sites(flat, "text", "resid_post") == tuple(f"text.layers.{i}.resid_post" for i in range(3))
    # Numeric order, not string order: layer 10 after layer 9.
    assert sites.layer_sites(flat, "vision", "attn.logits")[-3:] == tuple(
        f"vision.layers.{i}.attn.logits" for i in (9, 10, 11))
    tree = sites.hierarchical_site_names("audio", (2, 1))
    assert sites.layer_sites(tree, "audio", "resid_pre") == (
        "audio.stages.0.blocks.0.resid_pre", "audio.stages.0.blocks.1.resid_pre", "audio.stages.1.blocks.0.resid_pre")
    with pytest.raises(ValueError, match=r"no 'lm' layer has a 'resid_post' site \(towers: \['text', 'vision'\]"):
        sites.layer_sites(flat, "lm", "resid_post")
    with pytest.raises(ValueError, match="no 'text' layer has a 'xattn.q' site"):
        sites.layer_sites(flat, "text", "xattn.q")


def test_every_listed_site_is_captured_with_documented_shape():
    model, v, pixels, ids, mask = tiny_clip()
    _, acts = model.apply(v, pixels, ids, mask, capture=("*",))
    assert set(acts) == set(model.site_names())
    assert acts["vision.layers.0.resid_post"].shape == (2, 5, 32)
    assert acts["vision.layers.0.attn.z"].shape == (2, 5, 4, 8)
    assert acts["text.layers.1.attn.logits"].shape == (2, 4, 5, 5)
    assert acts["text.layers.1.mlp.hidden"].shape == (2, 5, 64)
    assert acts["text.pooled"].shape == (2, 32) and acts["text.proj"].shape == (2, 16)


def test_unknown_site_lists_near_matches():
    model, v, pixels, ids, mask = tiny_clip()
    with pytest.raises(ValueError, match=r"unknown site 'vision\.layers\.1\.resid_psot' in edits; "
                                         r"did you mean vision\.layers\.1\.resid_post"):
        model.apply(v, pixels, ids, mask, edits={"vision.layers.1.resid_psot": None})
    with pytest.raises(ValueError, match=r"unknown site 'vision\.layers\.9\.\*' in capture: vision has "
                                         r"2 layers \(0-1\)"):
        model.apply(v, pixels, ids, mask, capture=("vision.layers.9.*",))
    with pytest.raises(ValueError, match=r"'text\.layers\.12\.resid_post' in edits: text has 2 layers \(0-1\)$"):
        model.apply(v, pixels, ids, mask, edits={"text.layers.12.resid_post": None})
    with pytest.raises(ValueError, match="unknown tower"):
        sites.tower_site_names("video", 1)


def test_a_layer_wildcard_edit_must_name_a_layer_that_has_the_site():
    import jax
    import jax.numpy as jnp

    from mrepe_jax.edits import Add, AtLayer
    from mrepe_jax.models.blip2.qformer import Blip2QFormerConfig, qformer_site_names

    known = qformer_site_names(Blip2QFormerConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                                                  intermediate_size=16, cross_attention_frequency=2,
                                                  encoder_hidden_size=8))
    key = "qformer.layers.*.xattn.q"
    sites.validate_edits({key: AtLayer(2, Add(jnp.ones(4)))}, known)  # layers 0 and 2 cross-attend
    with pytest.raises(ValueError, match=r"names layer\(s\) \[1\], which have no such site; it exists "
                                         r"on layers \[0, 2\]"):
        sites.validate_edits({key: AtLayer(1, Add(jnp.ones(4)))}, known)
    with pytest.raises(ValueError, match="unknown site 'qformer.layers.\\*.xattn.nope'"):
        sites.validate_edits({"qformer.layers.*.xattn.nope": AtLayer(0, Add(jnp.ones(4)))}, known)
    # A traced layer (a sweep over layers) cannot be checked before tracing, and is not.
    jax.jit(lambda i: sites.validate_edits({key: AtLayer(i, Add(jnp.ones(4)))}, known) and 0)(1)


def test_vision_embed_is_before_pre_layrnorm_but_text_embed_is_the_input_of_layer_0():
    import jax
    import numpy as np

    model, v, pixels, ids, mask = tiny_clip()
    # Random LayerNorm params: the init's scale 1 / bias 0 would hide which params are used.
    ln = v["params"]["vision_model"]["pre_layrnorm"]
    keys = jax.random.split(jax.random.key(7), 2)
    ln = {"scale": 1 + 0.3 * jax.random.normal(keys[0], ln["scale"].shape),
          "bias": 0.3 * jax.random.normal(keys[1], ln["bias"].shape)}
    v = {"params": {**v["params"], "vision_model": {**v["params"]["vision_model"], "pre_layrnorm": ln}}}
    _, acts = model.apply(v, pixels, ids, mask, capture=("*.embed", "*.layers.0.resid_pre"))
    np.testing.assert_array_equal(acts["text.embed"], acts["text.layers.0.resid_pre"])
    x = np.asarray(acts["vision.embed"], np.float64)
    assert not np.allclose(x, acts["vision.layers.0.resid_pre"], atol=1e-2)
    eps = model.config.vision_config.layer_norm_eps
    normed = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    np.testing.assert_allclose(acts["vision.layers.0.resid_pre"],
                               normed * np.asarray(ln["scale"]) + np.asarray(ln["bias"]), atol=1e-5)
