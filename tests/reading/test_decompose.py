"""TextSpan's decomposition (``reading.decompose``): the terms sum back to the embedding on three
towers (the ToyWorld tri-modal CLIP's vision tower, a transformers CLIP through our port, BLIP-2's
EVA ViT from transformers), each head's terms match an independent numpy computation from its
``attn.z``, and the compiled program's memory grows linearly in the number of tokens.

Every tensor is re-randomised (HF's and Flax's inits zero biases and set LayerNorms to (1, 0),
which would hide a misplaced LN beta or out-projection bias).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mrepe_jax.models.blip2 import parts_convert
from mrepe_jax.models.clip import from_torch_model
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params
from mrepe_jax.reading import decompose as dec
from tests.models.hf_tiny import tiny_hf_clip

ATOL = 1e-5


def randomise_flax(params, seed):
    """Every leaf redrawn: LayerNorm scales around 1, everything else N(0, 0.15^2)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (path, leaf), key in zip(leaves, keys):
        noise = jax.random.normal(key, leaf.shape, leaf.dtype)
        is_scale = jax.tree_util.keystr(path).endswith("['scale']")
        out.append(1.0 + 0.3 * noise if is_scale else 0.15 * noise)
    return jax.tree_util.tree_unflatten(tree, out)


@functools.cache
def toyworld():
    from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
    from mrepe_jax.train import toyclip
    from tests.train.test_toyclip import tiny_cfg

    world = ToyWorld(ToyWorldConfig())
    model = toyclip.TriModalCLIP(toyclip.model_config(world, tiny_cfg(num_layers=2)))
    b = world.batch(range(3), split="train")
    v = jax.jit(model.init)(jax.random.key(0), b["image"], b["input_ids"], b["attention_mask"], b["audio"])
    return (model, {"params": randomise_flax(v["params"], 1)},
            {"vision": jnp.asarray(b["image"]), "audio": jnp.asarray(b["audio"])})


@functools.cache
def hf_clip():
    hf = tiny_hf_clip(3, hidden_act="gelu", layers=3, patch_size=4)  # 17 tokens, 4 heads
    model, params = from_torch_model(hf)
    pixels = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    return model, {"params": params}, jnp.asarray(pixels)


@functools.cache
def eva():
    config = transformers.Blip2VisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                            num_attention_heads=3, image_size=16, patch_size=4,
                                            hidden_act="gelu", layer_norm_eps=1e-6)
    config._attn_implementation = "eager"
    hf = transformers.Blip2VisionModel(config)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model, params = parts_convert.from_torch_vision(hf.eval())
    pixels = np.random.default_rng(1).normal(size=(3, 16, 16, 3)).astype(np.float32)
    return model, {"params": params}, jnp.asarray(pixels)


TOWERS = {"toyworld": toyworld, "hf_clip": hf_clip, "eva": eva}
CASES = {  # (model, readout, scanned layers); the ToyWorld CLIP's audio tower is a ViT too
    "toyworld_proj": ("toyworld", "proj", False),
    "toyworld_audio_proj": ("toyworld", "proj", False),
    "hf_clip_proj": ("hf_clip", "proj", False),
    "hf_clip_pooled_scanned": ("hf_clip", "pooled", True),
    "eva_cls": ("eva", "cls", False),
    "eva_pooled": ("eva", "pooled", False),
}


def build(case):
    """(model, variables, inputs, readout, tower)."""
    name, readout, scanned = CASES[case]
    model, v, inputs = TOWERS[name]()
    tower = "audio" if "audio" in case else "vision"
    if isinstance(inputs, dict):
        inputs = inputs[tower]
    if scanned:
        model = model.clone(execution=Execution(scan_layers=True))
        v = {"params": stack_layer_params(v["params"])}
    return model, v, inputs, readout, tower


@pytest.mark.parametrize("case", CASES)
def test_terms_sum_to_the_embedding(case):
    model, v, pixels, readout, tower = build(case)
    d = dec.decompose(model, v, pixels, tower, readout=readout)
    n, layers, heads, tokens, width = d.attn.shape
    assert d.embed.shape == d.target.shape == (n, width) and d.mlp.shape == (n, layers, width)
    # the model's own embedding (here from another program: the explicit attention path)
    if readout == "proj":
        np.testing.assert_allclose(d.target, model.apply(v, tower, pixels, method="encode")[0],
                                   atol=ATOL)
    err = float(np.abs(np.asarray(d.total()) - np.asarray(d.target)).max())
    print(f"\n{case}: max |sum of terms - embedding| = {err:.1e} (|embedding| <= "
          f"{float(np.abs(np.asarray(d.target)).max()):.2f})")
    assert err <= ATOL, f"{case}: sum of terms off the embedding by {err:.2e}"
    # not a trivial sum: every kind of term carries part of it
    for part in (d.embed, d.mlp.sum(1), d.attn.sum((1, 2, 3))):
        assert float(np.abs(np.asarray(part)).max()) > 1e-2


@pytest.mark.parametrize("case", ["toyworld_proj", "eva_pooled"])
def test_each_head_matches_numpy_from_its_z(case):
    """Per head (summed over source tokens): the head's ``z`` at CLS through its slice of W_O, plus
    ``b_O / H`` (the ``b_O / (T H)`` of each token), centred, over every LN's std, times gamma,
    projected; the embedding term carries every beta. Independent of the pattern x value route."""
    model, v, pixels, readout, _ = build(case)
    d = dec.decompose(model, v, pixels, readout=readout)
    w = dec.readout_weights(model, v, "vision", readout)
    layers, heads = w.out_kernel.shape[:2]
    capture = tuple(f"vision.layers.{i}.{p}" for i in range(layers) for p in ("attn.z", "resid_post"))
    if readout == "proj":
        _, acts = model.apply(v, "vision", pixels, method="encode", capture=capture)
    else:
        _, acts = model.apply(v, pixels, capture=capture)
    x = np.asarray(acts[f"vision.layers.{layers - 1}.resid_post"][:, 0], np.float64)
    means, stds, mapped_beta = [], [], np.zeros(x.shape[-1])
    for g, b in zip(w.scales, w.biases):
        means.append(x.mean(-1, keepdims=True))
        xc = x - means[-1]
        stds.append(np.sqrt((xc ** 2).mean(-1, keepdims=True) + w.eps))
        mapped_beta = (mapped_beta - np.mean(mapped_beta, -1, keepdims=True)) * np.asarray(g) / stds[-1] + b
        x = xc / stds[-1] * np.asarray(g) + np.asarray(b)
    proj = np.eye(x.shape[-1]) if w.proj is None else np.asarray(w.proj, np.float64)

    def linear(t):  # t [N, ..., D]: the LN chain's linear part, per example, then the projection
        for g, s in zip(w.scales, stds):
            s = s.reshape((-1,) + (1,) * (t.ndim - 1))
            t = (t - t.mean(-1, keepdims=True)) / s * np.asarray(g)
        return t @ proj

    kernel = np.asarray(w.out_kernel, np.float64)
    for i in range(layers):
        z = np.asarray(acts[f"vision.layers.{i}.attn.z"][:, 0], np.float64)  # [N, H, Dh]
        head_out = np.einsum("nhk,hkd->nhd", z, kernel[i]) + np.asarray(w.out_bias[i]) / heads
        np.testing.assert_allclose(d.heads()[:, i], linear(head_out), atol=ATOL, err_msg=f"layer {i}")
    np.testing.assert_allclose(d.mean, np.concatenate(means, -1), atol=1e-6)
    np.testing.assert_allclose(d.std, np.concatenate(stds, -1), atol=1e-6)
    # the embedding term: layer 0's input through the same map, plus every beta
    _, e = (model.apply(v, "vision", pixels, method="encode", capture=("vision.layers.0.resid_pre",))
            if readout == "proj" else model.apply(v, pixels, capture=("vision.layers.0.resid_pre",)))
    ref = linear(np.asarray(e["vision.layers.0.resid_pre"][:, 0], np.float64)) + mapped_beta @ proj
    np.testing.assert_allclose(d.embed, ref, atol=ATOL)


def _memory(fn, *args):
    """(temp, output) bytes of the compiled ``fn``: what it needs beyond its arguments."""
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes, m.output_size_in_bytes


def _acts_spec(n, layers, heads, tokens, dh):
    d = heads * dh
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    acts = {"vision.layers.0.resid_pre": f32((n, tokens, d))}
    for i in range(layers):
        acts.update({f"vision.layers.{i}.mlp_out": f32((n, tokens, d)),
                     f"vision.layers.{i}.attn.pattern": f32((n, heads, tokens, tokens)),
                     f"vision.layers.{i}.attn.v": f32((n, tokens, heads, dh)),
                     f"vision.layers.{i}.resid_post": f32((n, tokens, d))})
    return acts


def test_memory_grows_linearly_in_tokens():
    """XLA's temp + output buffers of the compiled decomposition at T = 64, 128, 256 tokens (the
    captured patterns, [N, H, T, T] each, are its arguments, not counted). Linear growth: T -> 2T
    adds the same again, so the second increment is twice the first, within 15 % (buffer
    alignment and layout choices move a few kB); a T^2 term would push the ratio towards 4. The
    control, every query's per-source terms ``[N, L, H, T, T, D']`` (what reading only the readout
    row avoids), must show ratio >= 3: the measurement tells the two apart. Temp alone is held to
    a small multiple of the output, which any decomposition must hold."""
    n, layers, heads, dh, width = 2, 3, 4, 8, 16
    d = heads * dh
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    w = dec.Readout(f32((layers, heads, dh, d)), f32((layers, d)), (f32((d,)),), (f32((d,)),),
                    f32((d, width)), 1e-5)

    def ours(acts, w):
        return dec.decompose_acts(acts, w, "vision")

    def every_query(acts, w):
        p = jnp.stack([acts[f"vision.layers.{i}.attn.pattern"] for i in range(layers)], 1)
        vv = jnp.stack([acts[f"vision.layers.{i}.attn.v"] for i in range(layers)], 1)
        vo = jnp.einsum("nlthk,lhkd->nlhtd", vv, w.out_kernel) @ w.proj
        return p[..., None] * vo[:, :, :, None]

    sizes = (64, 128, 256)
    ratio = lambda m: (m[2] - m[1]) / (m[1] - m[0])  # noqa: E731
    mem = [_memory(ours, _acts_spec(n, layers, heads, t, dh), w) for t in sizes]
    total = [sum(m) for m in mem]
    print(f"\n(temp, output) bytes at T={sizes}: {mem}")
    assert 1.7 <= ratio(total) <= 2.3, f"temp + output bytes {total} at T={sizes}: not linear"
    assert 1.7 <= ratio([m[0] for m in mem]) <= 2.3, f"temp bytes {mem} at T={sizes}: not linear"
    out_bytes = 4 * n * layers * heads * sizes[-1] * width
    assert mem[-1][0] <= 3 * out_bytes, (mem, out_bytes)
    control = [sum(_memory(every_query, _acts_spec(n, layers, heads, t, dh), w)) for t in sizes]
    print(f"every-query control, temp + output bytes: {control}")
    assert ratio(control) >= 3.0, control


SHARDED = """
    import json
    import jax, numpy as np
    from mrepe_jax import parallel
    from mrepe_jax.reading import decompose as dec
    from tests.models.tiny import tiny_clip

    jax.config.update("jax_default_matmul_precision", "highest")
    model, v, pixels, _, _ = tiny_clip()
    pixels = np.concatenate([pixels, pixels[:1] * 0.5])  # 3 examples over 2 devices: padded
    mesh = parallel.make_mesh()
    one, many = dec.decompose(model, v, pixels), dec.decompose(model, v, pixels, mesh=mesh)
    err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)))
    print(json.dumps({"devices": jax.device_count(), "err": err, "n": int(many.attn.shape[0]),
                      "shards": len(many.attn.addressable_shards)}))
"""


def test_examples_split_over_two_devices_give_the_one_device_terms():
    from tests.test_parallel import run_with_devices

    res = run_with_devices(SHARDED, n=2)
    assert res["devices"] == 2 and res["n"] == 3 and res["shards"] == 2
    assert res["err"] <= 1e-6, res
