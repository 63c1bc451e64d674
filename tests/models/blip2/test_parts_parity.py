"""Layer-by-layer parity of BLIP-2's vision tower and Q-Former against transformers (fp32, atol 1e-5),
their site tables, an edit against an HF forward hook, conversion tables and config errors.

Tiny configs with EVERY tensor re-randomised (HF's vision ``initializer_range`` is 1e-10 and its
init zeroes biases / sets LayerNorms to (1, 0), which would hide a swapped bias or a missing LN).
The vision width (48) differs from the Q-Former's (32) so that a cross-attention reading the wrong
width cannot pass, and the intermediate sizes differ from the hidden sizes.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mrepe_jax.edits import Add
from mrepe_jax.models.blip2 import parts_convert as conv
from mrepe_jax.models.blip2.qformer import Blip2QFormerConfig, check_composable
from mrepe_jax.models.blip2.vision import Blip2VisionConfig
from mrepe_jax.models.convert import ConversionError, to_hf
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params
from mrepe_jax.sites import LAYER_POINTS, XATTN_POINTS

ATOL = 1e-5
B, IMAGE, PATCH, VD, VH, VI = 3, 16, 8, 48, 4, 80  # vision: 5 tokens of width 48, 4 heads, MLP 80
NQ, QD, QH, QI, QL = 4, 32, 4, 64, 3  # Q-Former: 4 queries of width 32, 4 heads, MLP 64, 3 layers
T_IMG = (IMAGE // PATCH) ** 2 + 1


def randomise(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name.lower() for s in ("layer_norm", "layernorm")):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def vision_config(qkv_bias=True):
    c = transformers.Blip2VisionConfig(hidden_size=VD, intermediate_size=VI, num_hidden_layers=2,
                                       num_attention_heads=VH, image_size=IMAGE, patch_size=PATCH,
                                       hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=qkv_bias)
    c._attn_implementation = "eager"
    return c


def qformer_config(freq, text_input=False):
    c = transformers.Blip2QFormerConfig(hidden_size=QD, num_hidden_layers=QL, num_attention_heads=QH,
                                        intermediate_size=QI, hidden_act="gelu", encoder_hidden_size=VD,
                                        cross_attention_frequency=freq, use_qformer_text_input=text_input)
    c._attn_implementation = "eager"
    return c


@functools.cache
def hf_vision(qkv_bias=True):
    return randomise(transformers.Blip2VisionModel(vision_config(qkv_bias)), 1)


@functools.cache
def hf_qformer(freq, text_input=False):
    return randomise(transformers.Blip2QFormerModel(qformer_config(freq, text_input)), 2 + freq)


@functools.cache
def inputs():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(B, 3, IMAGE, IMAGE)).astype(np.float32)
    queries = np.broadcast_to(rng.normal(size=(1, NQ, QD)), (B, NQ, QD)).astype(np.float32)
    with torch.no_grad():
        image_embeds = hf_vision()(pixel_values=torch.tensor(pixels)).last_hidden_state.numpy()
    return pixels, queries, image_embeds


def close(a, b, what, relative=False):
    """Max abs error <= ATOL; ``relative``: <= ATOL * max(1, max |b|), for unscaled logits."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    err = float(np.abs(a - b).max())
    tol = ATOL * max(1.0, float(np.abs(b).max())) if relative else ATOL
    assert err <= tol, f"{what}: max abs error {err:.2e} > {tol:.1e}"
    return err


def recorded_outputs(modules, fn):
    """``fn()`` with forward hooks recording each of ``modules`` (name -> torch module) outputs."""
    seen = {}
    handles = [m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, out.numpy()))
               for n, m in modules.items()]
    try:
        return fn(), seen
    finally:
        for h in handles:
            h.remove()


def check_projections(acts, block, q, k, v, heads, what):
    """Our ``{block}.q/k/v`` against HF's projection outputs ``[B, T, D]``, and ``{block}.logits``
    against the raw ``Q K^T`` (before the 1/sqrt(d) scaling) computed from them. A key bias cancels
    in the softmax, so only these sites can show that it is converted and used."""
    split = [x.reshape(x.shape[:2] + (heads, -1)) for x in (q, k, v)]
    for point, ref in zip("qkv", split):
        close(acts[f"{block}.{point}"], ref, f"{what} {point}")
    close(acts[f"{block}.logits"], np.einsum("bqhd,bkhd->bhqk", split[0], split[1]), f"{what} logits",
          relative=True)


VISION_RUNS = {
    "unrolled": (Execution(attention="explicit"), True),
    # The scanned explicit path is CLIP's shared encoder stack, checked in test_clip_parity.
    "scanned_fused": (Execution(scan_layers=True, attention="fused"), True),
    "unrolled_no_qkv_bias": (Execution(attention="explicit"), False),
}


@pytest.mark.parametrize("run", VISION_RUNS)
def test_vision_every_layer_matches(run):
    execution, qkv_bias = VISION_RUNS[run]
    hf = hf_vision(qkv_bias)
    assert any(k.endswith("self_attn.qkv.bias") for k in hf.state_dict()) == qkv_bias
    pixels = inputs()[0]
    with torch.no_grad():
        ref, qkv = recorded_outputs(
            {i: layer.self_attn.qkv for i, layer in enumerate(hf.encoder.layers)},
            lambda: hf(pixel_values=torch.tensor(pixels), output_hidden_states=True, output_attentions=True))
    model, params = conv.from_torch_vision(hf)
    if execution.scan_layers:
        params = stack_layer_params(params)
    model = model.clone(execution=execution)
    nhwc = pixels.transpose(0, 2, 3, 1)
    out, _ = model.apply({"params": params}, nhwc)  # no capture: the packed / fused attention
    cap_out, acts = model.apply({"params": params}, nhwc,
                                capture=("*.resid_pre", "*.resid_post", "*.attn.*", "vision.pooled"))
    close(acts["vision.layers.0.resid_pre"], ref.hidden_states[0], "vision embeddings")
    for i in range(len(ref.hidden_states) - 1):
        close(acts[f"vision.layers.{i}.resid_post"], ref.hidden_states[i + 1], f"vision layer {i}")
        close(acts[f"vision.layers.{i}.attn.pattern"], ref.attentions[i], f"vision layer {i} pattern")
        check_projections(acts, f"vision.layers.{i}.attn", *np.split(qkv[i], 3, axis=-1), VH,
                          f"vision layer {i}")
    for o in (out, cap_out):
        close(o["last_hidden_state"], ref.last_hidden_state, "vision last_hidden_state")
        close(o["pooler_output"], ref.pooler_output, "vision pooler_output")
    close(acts["vision.pooled"], ref.pooler_output, "vision.pooled")
    # pooler_output really is post_layernorm applied twice (once over all tokens, once on CLS)
    assert np.abs(np.asarray(ref.pooler_output) - np.asarray(ref.last_hidden_state[:, 0])).max() > 1e-2


QFORMER_RUNS = {
    "freq1": (1, Execution(attention="explicit")),
    "freq2": (2, Execution(attention="explicit")),
    "freq2_fused": (2, Execution(attention="fused")),
}


def run_qformer(freq, execution=Execution(attention="explicit"), mask=None, capture=(), edits=None):
    model, params = conv.from_torch_qformer(hf_qformer(freq))
    _, queries, image_embeds = inputs()
    return model.clone(execution=execution).apply({"params": params}, queries, image_embeds, mask,
                                                  capture=capture, edits=edits)


def hf_qformer_ref(freq, mask):
    _, queries, image_embeds = inputs()
    with torch.no_grad():
        return hf_qformer(freq)(query_embeds=torch.tensor(queries),
                                encoder_hidden_states=torch.tensor(image_embeds),
                                encoder_attention_mask=torch.tensor(mask), output_hidden_states=True,
                                output_attentions=True)


@pytest.mark.parametrize("masked", [False, True], ids=["image_mask_ones", "image_mask_partial"])
@pytest.mark.parametrize("run", QFORMER_RUNS)
def test_qformer_every_layer_matches(run, masked):
    freq, execution = QFORMER_RUNS[run]
    mask = np.ones((B, T_IMG), np.int64)
    if masked:
        mask[1, 2:] = 0
        mask[2, 0] = 0
    hf = hf_qformer(freq)
    projections = {(i, block, p): getattr(getattr(layer, block).attention, p)
                   for i, layer in enumerate(hf.encoder.layer)
                   for block in ("attention", "crossattention") if hasattr(layer, block)
                   for p in ("query", "key", "value")}
    ref, proj = recorded_outputs(projections, lambda: hf_qformer_ref(freq, mask))
    out, _ = run_qformer(freq, execution, mask)
    cap_out, acts = run_qformer(freq, execution, mask, capture=(
        "qformer.embed", "*.resid_pre", "*.resid_post", "*.attn.*", "*.xattn.*"))
    close(acts["qformer.embed"], ref.hidden_states[0], "qformer embed (layernormed queries)")
    close(acts["qformer.layers.0.resid_pre"], ref.hidden_states[0], "qformer layer 0 input")
    # transformers 5.24 records BOTH attentions of a layer in `attentions` (its ".attention" recorder
    # also matches "crossattention.attention"): self, then cross where the layer has one.
    recorded = iter(ref.attentions)
    xlayers = [i for i in range(QL) if i % freq == 0]
    assert len(ref.attentions) == QL + len(xlayers) and len(ref.cross_attentions) == len(xlayers)
    for i in range(QL):
        close(acts[f"qformer.layers.{i}.resid_post"], ref.hidden_states[i + 1], f"qformer layer {i}")
        close(acts[f"qformer.layers.{i}.attn.pattern"], next(recorded), f"qformer layer {i} pattern")
        for block, ours in (("attention", "attn"), ("crossattention", "xattn")):
            if (i, block, "query") in proj:
                check_projections(acts, f"qformer.layers.{i}.{ours}",
                                  *(proj[i, block, p] for p in ("query", "key", "value")), QH,
                                  f"qformer layer {i} {block}")
        if i in xlayers:
            x = acts[f"qformer.layers.{i}.xattn.pattern"]
            close(x, next(recorded), f"qformer layer {i} cross-attention pattern")
            close(x, ref.cross_attentions[xlayers.index(i)], f"qformer layer {i} cross_attentions")
    for o in (out, cap_out):
        close(o["last_hidden_state"], ref.last_hidden_state, "qformer last_hidden_state")
        close(o["pooler_output"], ref.pooler_output, "qformer pooler_output")
    if masked:  # the mask matters: masked image tokens get no weight, and the output moves
        pattern = np.asarray(acts["qformer.layers.0.xattn.pattern"])
        assert pattern[1, :, :, 2:].max() == 0 and pattern[2, :, :, 0].max() == 0
        assert np.abs(np.asarray(out["last_hidden_state"]) -
                      np.asarray(run_qformer(freq, execution, None)[0]["last_hidden_state"])).max() > 1e-3


def vision_shape(name):
    point = name.split(".", 3)[-1] if ".layers." in name else name.split(".")[1]
    dh = VD // VH
    return {"embed": (B, T_IMG, VD), "pooled": (B, VD), "attn.q": (B, T_IMG, VH, dh),
            "attn.k": (B, T_IMG, VH, dh), "attn.v": (B, T_IMG, VH, dh), "attn.z": (B, T_IMG, VH, dh),
            "attn.logits": (B, VH, T_IMG, T_IMG), "attn.pattern": (B, VH, T_IMG, T_IMG),
            "mlp.hidden": (B, T_IMG, VI)}.get(point, (B, T_IMG, VD))


def qformer_shape(name):
    point = name.split(".", 3)[-1] if ".layers." in name else name.split(".")[1]
    dh = QD // QH
    heads = {"q": (B, NQ, QH, dh), "k": (B, NQ, QH, dh), "v": (B, NQ, QH, dh), "z": (B, NQ, QH, dh),
             "logits": (B, QH, NQ, NQ), "pattern": (B, QH, NQ, NQ)}
    xheads = dict(heads, k=(B, T_IMG, QH, dh), v=(B, T_IMG, QH, dh), logits=(B, QH, NQ, T_IMG),
                  pattern=(B, QH, NQ, T_IMG))
    if point.startswith("attn."):
        return heads[point[5:]]
    if point.startswith("xattn."):
        return xheads[point[6:]]
    return (B, NQ, QI) if point == "mlp.hidden" else (B, NQ, QD)


@pytest.mark.parametrize("freq", [1, 2])
def test_qformer_capture_returns_every_documented_site(freq):
    model, _ = conv.from_torch_qformer(hf_qformer(freq))
    _, acts = run_qformer(freq, capture=("*",))
    expected = ["qformer.embed"]
    for i in range(QL):
        points = list(LAYER_POINTS)
        if i % freq == 0:  # cross-attention layers: xattn points between resid_mid and the MLP
            k = points.index("resid_mid") + 1
            points[k:k] = XATTN_POINTS
        expected += [f"qformer.layers.{i}.{p}" for p in points]
    assert list(model.site_names()) == expected
    assert set(acts) == set(expected)
    for name in expected:
        assert acts[name].shape == qformer_shape(name), name
    assert ("qformer.layers.1.xattn.q" in acts) == (freq == 1)


def test_vision_capture_returns_every_documented_site():
    model, params = conv.from_torch_vision(hf_vision())
    _, acts = model.apply({"params": params}, inputs()[0].transpose(0, 2, 3, 1), capture=("*",))
    expected = ["vision.embed"] + [f"vision.layers.{i}.{p}" for i in range(2) for p in LAYER_POINTS]
    expected.append("vision.pooled")
    assert list(model.site_names()) == expected
    assert set(acts) == set(expected)
    for name in expected:
        assert acts[name].shape == vision_shape(name), name


def test_unknown_sites_are_clear_errors():
    model, params = conv.from_torch_qformer(hf_qformer(2))
    _, queries, image_embeds = inputs()
    with pytest.raises(ValueError, match=r"unknown site 'qformer.layers.1.xattn.q' in capture"):
        model.apply({"params": params}, queries, image_embeds, capture=("qformer.layers.1.xattn.q",))
    with pytest.raises(ValueError, match=r"unknown site 'qformer.layers.0.resid_psot'.*did you mean "
                                         r"qformer.layers.0.resid_post"):
        model.apply({"params": params}, queries, image_embeds,
                    edits={"qformer.layers.0.resid_psot": Add(jnp.ones(QD))})
    vmodel, vparams = conv.from_torch_vision(hf_vision())
    with pytest.raises(ValueError, match=r"unknown site 'vision.proj'"):
        vmodel.apply({"params": vparams}, inputs()[0].transpose(0, 2, 3, 1), capture=("vision.proj",))


@pytest.mark.parametrize("site, module", [("qformer.layers.0.resid_post", "layer0"),
                                          ("qformer.layers.0.xattn_out", "xdense0")])
def test_add_edit_equals_hf_forward_hook(site, module):
    """Adding a vector at a site equals adding it to the matching HF module's output by a hook."""
    hf = hf_qformer(2)
    target = {"layer0": hf.encoder.layer[0],
              "xdense0": hf.encoder.layer[0].crossattention.output.dense}[module]
    delta = np.random.default_rng(5).normal(size=(QD,)).astype(np.float32)
    mask = np.ones((B, T_IMG), np.int64)
    handle = target.register_forward_hook(lambda mod, args, out: out + torch.tensor(delta))
    try:
        ref = hf_qformer_ref(2, mask)
    finally:
        handle.remove()
    clean, _ = run_qformer(2, mask=mask)
    edited, _ = run_qformer(2, mask=mask, edits={site: Add(jnp.asarray(delta), alpha=1.0)})
    close(edited["last_hidden_state"], ref.last_hidden_state, f"Add at {site} vs HF hook")
    assert np.abs(np.asarray(edited["last_hidden_state"]) - np.asarray(clean["last_hidden_state"])).max() > 1e-2


def test_configs_that_cannot_work_name_their_fields():
    with pytest.raises(ValueError, match=r"Blip2QFormerConfig.hidden_size 30 .*num_attention_heads 4"):
        Blip2QFormerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"Blip2VisionConfig.hidden_size 30 .*num_attention_heads 4"):
        Blip2VisionConfig(hidden_size=30, num_attention_heads=4, image_size=16, patch_size=8)
    with pytest.raises(ValueError, match=r"Blip2QFormerConfig.cross_attention_frequency"):
        Blip2QFormerConfig(cross_attention_frequency=0)
    vision = Blip2VisionConfig(hidden_size=VD, num_attention_heads=VH, image_size=IMAGE, patch_size=PATCH)
    with pytest.raises(ValueError, match=r"encoder_hidden_size 32 does not match .*"
                                         r"Blip2VisionConfig.hidden_size 48"):
        check_composable(vision, Blip2QFormerConfig(hidden_size=QD, num_attention_heads=QH,
                                                    encoder_hidden_size=QD))
    check_composable(vision, Blip2QFormerConfig(hidden_size=QD, num_attention_heads=QH, encoder_hidden_size=VD))
    # the same mismatch met at run time, when image embeddings of another width reach the Q-Former
    model, params = conv.from_torch_qformer(hf_qformer(2))
    _, queries, image_embeds = inputs()
    with pytest.raises(ValueError, match=r"encoder_hidden_size=48"):
        model.apply({"params": params}, queries, image_embeds[..., :QD])


@functools.cache
def hf_blip2():
    opt = transformers.OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                 vocab_size=64, max_position_embeddings=32, word_embed_proj_dim=16)
    config = transformers.Blip2Config(vision_config=vision_config().to_dict(),
                                      qformer_config=qformer_config(2).to_dict(),
                                      text_config=opt.to_dict(), num_query_tokens=NQ)
    return randomise(transformers.Blip2ForConditionalGeneration(config), 7)


def test_part_tables_take_every_key_of_a_blip2_checkpoint():
    """With the checkpoint prefixes, the two tables (plus ``query_tokens``) use every key of
    ``Blip2ForConditionalGeneration`` except the language model's and its input projection."""
    hf = hf_blip2()
    sd = hf.state_dict()
    vision, qformer, nq = conv.parts_from_hf_dict(hf.config.to_dict())
    assert (qformer.encoder_hidden_size, nq) == (VD, NQ)
    vparams = conv.convert_vision(sd, vision, conv.VISION_PREFIX)
    qparams = conv.convert_qformer(sd, qformer, conv.QFORMER_PREFIX)
    for params, rules, prefix, part in ((vparams, conv.vision_rules(), conv.VISION_PREFIX, hf.vision_model),
                                        (qparams, conv.qformer_rules(), conv.QFORMER_PREFIX, hf.qformer)):
        back = to_hf(params, rules)  # and back: every key and value of the part
        assert sorted(back) == sorted(part.state_dict())
        for k, v in back.items():
            np.testing.assert_array_equal(v, sd[prefix + k].numpy(), err_msg=k)
    rules = conv.vision_rules(conv.VISION_PREFIX) + conv.qformer_rules(conv.QFORMER_PREFIX)
    rules += (conv.QUERY_TOKENS_RULE,)
    left = sorted(k for k in sd if not any(r.match(k) for r in rules))
    assert left and all(k.startswith(("language_model.", "language_projection.")) for k in left), left
    assert conv.QUERY_TOKENS_RULE.match("query_tokens") and sd["query_tokens"].shape == (1, NQ, QD)


def test_conversion_errors_name_keys_and_shapes():
    sd = {k: v.numpy() for k, v in hf_vision().state_dict().items()}
    config = Blip2VisionConfig.from_hf_dict(hf_vision().config.to_dict())
    bad = dict(sd)
    bad["encoder.layers.0.self_attn.q_bias"] = bad.pop("encoder.layers.0.self_attn.qkv.bias")[:VD]
    bad["post_layernorm.weight"] = bad["post_layernorm.weight"][:-1]
    with pytest.raises(ConversionError) as e:
        conv.convert_vision(bad, config)
    msg = str(e.value)
    assert "unused checkpoint key(s): encoder.layers.0.self_attn.q_bias" in msg
    assert "missing parameter(s): encoder/layers/0/self_attn/qkv/bias" in msg
    assert "post_layernorm.weight: checkpoint (47,)" in msg and "expects (48,)" in msg


def test_qformer_with_text_input_weights_converts_and_matches():
    """``use_qformer_text_input`` checkpoints carry a text-token MLP per layer; the query-only
    Q-Former skips exactly those keys and still matches HF on queries."""
    hf = hf_qformer(2, text_input=True)
    assert any(".intermediate.dense." in k for k in hf.state_dict())
    model, params = conv.from_torch_qformer(hf)
    _, queries, image_embeds = inputs()
    with torch.no_grad():
        ref = hf(query_embeds=torch.tensor(queries), encoder_hidden_states=torch.tensor(image_embeds))
    out, _ = model.apply({"params": params}, queries, image_embeds)
    close(out["last_hidden_state"], ref.last_hidden_state, "qformer (text-input config) output")


def test_staged_runs_equal_the_full_forward():
    """``embed`` -> ``run_layers`` in two ranges (-> ``readout``) is the full pass, for both parts:
    what a patching sweep that reuses a clean prefix relies on."""
    vmodel, vparams = conv.from_torch_vision(hf_vision())
    v = {"params": vparams}
    nhwc = inputs()[0].transpose(0, 2, 3, 1)
    full, _ = vmodel.apply(v, nhwc)
    h, _ = vmodel.apply(v, nhwc, method=vmodel.embed)
    h, _ = vmodel.apply(v, h, start=0, stop=1, method=vmodel.run_layers)
    h, _ = vmodel.apply(v, h, start=1, stop=2, method=vmodel.run_layers)
    (last, pooled), _ = vmodel.apply(v, h, method=vmodel.readout)
    np.testing.assert_array_equal(last, full["last_hidden_state"])
    np.testing.assert_array_equal(pooled, full["pooler_output"])

    model, params = conv.from_torch_qformer(hf_qformer(2))
    q = {"params": params}
    _, queries, image_embeds = inputs()
    full, _ = model.apply(q, queries, image_embeds)
    h, _ = model.apply(q, queries, method=model.embed)
    h, _ = model.apply(q, h, image_embeds, start=0, stop=2, method=model.run_layers)
    h, _ = model.apply(q, h, image_embeds, start=2, stop=QL, method=model.run_layers)
    np.testing.assert_array_equal(h, full["last_hidden_state"])
    with pytest.raises(ValueError, match=r"layer range \[2, 5\) is outside the Q-Former's 0..3"):
        model.apply(q, h, image_embeds, start=2, stop=5, method=model.run_layers)
