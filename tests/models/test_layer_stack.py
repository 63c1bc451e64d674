"""Scanned layer stacks (``Execution(scan_layers=True)``): same outputs, captures and edits as the
unrolled layers; a traced start layer; one compiled program for a sweep over every layer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax import sites as sites_lib
from mrepe_jax.edits import Add, AtLayer, Replace, token_mask
from mrepe_jax.layouts import TOKEN_AXES
from mrepe_jax.models.clip import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params, unstack_layer_params
from tests.models.tiny import CONFIG, tiny_clip

ATOL = 1e-5
SCAN = Execution(scan_layers=True)


@pytest.fixture(scope="module")
def both():
    model, v, pixels, ids, mask = tiny_clip()
    scanned = CLIPModel(CONFIG, execution=SCAN)
    return model, v, scanned, {"params": stack_layer_params(v["params"])}, pixels, ids, mask


def test_stacked_layout_is_the_scanned_models_and_round_trips(both):
    model, v, scanned, sv, pixels, ids, mask = both
    init = scanned.init(jax.random.key(1), pixels, ids, mask)
    assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, sv)
    assert sv["params"]["vision_model"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
    chex.assert_trees_all_equal(unstack_layer_params(sv["params"]), v["params"])


def test_params_of_the_other_layout_name_the_conversion(both):
    model, v, scanned, sv, pixels, ids, mask = both
    with pytest.raises(ValueError, match=r"params/(text|vision)_model/encoder/layers holds per-layer params .* "
                                         r"pass stack_layer_params\(params\)"):
        scanned.apply(v, pixels, ids, mask)
    with pytest.raises(ValueError, match=r"holds stacked layers \[n, \.\.\.\] .* "
                                         r"pass unstack_layer_params\(params\)"):
        model.apply(sv, "vision", pixels, method="encode")


def test_scanned_equals_unrolled_outputs_captures_and_edits(both):
    model, v, scanned, sv, pixels, ids, mask = both
    d = jax.random.normal(jax.random.key(2), (32,))
    edits = {"vision.layers.1.resid_pre": Add(d, 0.5),
             "text.layers.0.attn.z": Replace(jnp.zeros((1, 5, 4, 8)), token_mask(5, 2)),
             "vision.layers.0.attn.logits": Add(jnp.ones(5), 2.0)}
    a_out, a_acts = model.apply(v, pixels, ids, mask, edits=edits, capture=("*",))
    b_out, b_acts = scanned.apply(sv, pixels, ids, mask, edits=edits, capture=("*",))
    assert set(a_acts) == set(b_acts) == set(model.site_names())
    chex.assert_trees_all_close(b_out, a_out, atol=ATOL)
    chex.assert_trees_all_close(b_acts, a_acts, atol=ATOL)
    clean, _ = scanned.apply(sv, pixels, ids, mask)
    assert not np.allclose(b_out["image_embeds"], clean["image_embeds"], atol=1e-3)


def test_at_layer_edit_with_a_traced_layer_equals_the_static_key(both):
    model, v, scanned, sv, pixels, ids, mask = both
    d = jax.random.normal(jax.random.key(3), (32,))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def steered(layer):
        return scanned.apply(sv, pixels, ids, mask, edits={
            "vision.layers.*.resid_post": AtLayer(layer, Add(d, 0.7))})[0]["image_embeds"]

    for layer in range(2):
        want = model.apply(v, pixels, ids, mask,
                           edits={f"vision.layers.{layer}.resid_post": Add(d, 0.7)})[0]["image_embeds"]
        np.testing.assert_allclose(steered(jnp.int32(layer)), want, atol=ATOL)
    chex.clear_trace_counter()
    # the wildcard works unrolled too (the layer is compared as a value there)
    got = model.apply(v, pixels, ids, mask, edits={
        "vision.layers.*.resid_post": AtLayer(1, Add(d, 0.7))})[0]["image_embeds"]
    np.testing.assert_allclose(got, steered(jnp.int32(1)), atol=ATOL)


def test_traced_start_layer_reuses_the_prefix(both):
    model, v, scanned, sv, pixels, ids, mask = both
    _, acts = model.apply(v, "vision", pixels, method="encode", capture=("vision.layers.*.resid_pre",))
    full = model.apply(v, "vision", acts["vision.layers.0.resid_pre"], method="run_layers")[0]
    run = jax.jit(lambda start, h: scanned.apply(sv, "vision", h, start=start, method="run_layers")[0])
    for start in range(2):
        np.testing.assert_allclose(run(jnp.int32(start), acts[f"vision.layers.{start}.resid_pre"]),
                                   full, atol=ATOL)
    assert run._cache_size() == 1


def test_bad_stack_uses_are_clear_errors(both):
    model, v, scanned, sv, pixels, ids, mask = both
    h = jnp.zeros((2, 5, 32))
    with pytest.raises(ValueError, match="traced layer range needs the vision tower's layers stacked"):
        jax.jit(lambda s: model.apply(v, "vision", h, start=s, method="run_layers"))(jnp.int32(1))
    with pytest.raises(ValueError, match="capturing sites needs a static layer range"):
        jax.jit(lambda s: scanned.apply(sv, "vision", h, start=s, method="run_layers",
                                        capture=("vision.layers.1.resid_post",)))(jnp.int32(1))
    with pytest.raises(TypeError, match="must be AtLayer"):
        scanned.apply(sv, pixels, ids, mask, edits={"vision.layers.*.resid_pre": Add(jnp.ones(32))})
    with pytest.raises(TypeError, match="AtLayer belongs under a layer wildcard"):
        scanned.apply(sv, pixels, ids, mask, edits={"vision.layers.0.resid_pre": AtLayer(0, Add(jnp.ones(32)))})
    with pytest.raises(ValueError, match=r"unknown site 'vision.layers.\*.resid_psot'"):
        scanned.apply(sv, pixels, ids, mask, edits={"vision.layers.*.resid_psot": AtLayer(0, Add(jnp.ones(32)))})
    with pytest.raises(ValueError, match=r"layer range \[1, 3\) is outside the vision tower's 0..2"):
        scanned.apply(sv, "vision", h, start=1, stop=3, method="run_layers")
    with pytest.raises(ValueError, match="layers \\['1'\\] are missing"):
        stack_layer_params({"layers": {"0": {"w": jnp.ones(2)}, "2": {"w": jnp.ones(2)}}})


def test_fused_attention_gives_way_to_sites():
    s = sites_lib.Sites({"vision.layers.1.attn.z": Add(jnp.ones(8))}, ())
    assert s.touches("vision", 1, "attn", 2) and not s.touches("vision", 0, "attn", 2)
    assert s.touches("vision", jnp.int32(0), "attn", 2)  # traced: any layer of the stack counts
    captured = sites_lib.Sites({}, ("text.layers.*.attn.pattern",))
    assert captured.touches("text", 0, "attn", 2) and not captured.touches("vision", 0, "attn", 2)
    assert not sites_lib.Sites({}, ("*.resid_post",)).touches("vision", 0, "attn", 2)


def deep_clip(layers=12):
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2)
    return CLIPConfig(CLIPVisionConfig(**tower, image_size=16, patch_size=8),
                      CLIPTextConfig(**tower, vocab_size=50, max_position_embeddings=8, eos_token_id=49),
                      projection_dim=8)


@pytest.mark.slow  # a 12-layer model and three per-layer programs (~16 s): `make test-slow`
def test_a_twelve_layer_sweep_compiles_one_program_and_matches_per_layer_programs():
    from mrepe_jax.reading import causal, causal_programs

    config = deep_clip()
    model = CLIPModel(config)
    rng = np.random.default_rng(0)
    clean, corrupt = (jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32) for _ in range(2))
    variables = model.init(jax.random.key(0), clean, jnp.zeros((1, 4), jnp.int32))
    w = jax.random.normal(jax.random.key(1), (8,))
    metric = jax.tree_util.Partial(lambda w, e: e @ w, w)
    traced, per_layer_program = causal_programs.sweeps(None)
    traced.clear_cache()
    swept = causal.causal_effect(model, variables, "vision", clean, corrupt, metric)
    assert traced._cache_size() == 1  # 12 layers, one program
    assert swept.per_example.shape == (2, 12, 5)
    # Another metric of the same kind (other arrays) reuses that program.
    causal.causal_effect(model, variables, "vision", clean, corrupt,
                         jax.tree_util.Partial(metric.func, -w), layers=[3, 7])
    assert traced._cache_size() == 1
    # The same sweep through per-layer static programs: equal effects.
    for layer in (0, 5, 11):
        site = f"vision.layers.{layer}.resid_pre"
        _, base = model.apply(variables, "vision", clean, method="encode", capture=(site,))
        _, src = model.apply(variables, "vision", corrupt, method="encode", capture=(site,))
        masks = causal_programs.where_masks(TOKEN_AXES, 5, 1, range(5), False)
        base_metric = metric(model.apply(variables, "vision", clean, method="encode")[0])
        per_layer = per_layer_program(model, variables, "vision", "resid_pre", layer, None, metric,
                                   base[site], src[site], masks, None, clean)
        np.testing.assert_allclose(np.asarray(per_layer - base_metric).T, swept.per_example[:, layer],
                                   atol=ATOL)
