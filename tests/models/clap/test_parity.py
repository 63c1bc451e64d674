"""Parity of the Flax CLAP with transformers' ``ClapModel`` (fp32, atol 1e-5), through transformers'
own ``save_pretrained`` (safetensors) and our ``load_pretrained``, on an unfused and a fused tiny
config (``hf_tiny``): every Swin block's output and attention pattern, HF's per-stage hidden
states, every text layer, the pooled outputs, both projections and both logits.

HF returns one attention per stage and hidden states after each stage's patch merging, so the
per-block references come from forward hooks on its ``ClapAudioLayer`` / ``ClapAudioSelfAttention``
modules.
"""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mrepe_jax.models.clap import ClapAudioModel, load_pretrained
from tests.models.clap.hf_tiny import CONFIGS, random_inputs, tiny_hf_clap

torch.set_num_threads(1)
ATOL = 1e-5
NAMES = tuple(CONFIGS)
CAPTURE = ("audio.embed", "audio.stages.*.resid_pre", "audio.stages.*.resid_post", "audio.stages.*.attn.pattern",
           "text.embed", "text.layers.*.resid_post", "text.layers.*.attn.pattern", "*.pooled", "*.proj")


def hf_reference(hf, features, is_longer, ids, mask):
    """HF's outputs, plus every audio block's output and attention probabilities (hooks)."""
    blocks, patterns = {}, {}
    hooks = []
    for s, stage in enumerate(hf.audio_model.audio_encoder.layers):
        for b, block in enumerate(stage.blocks):
            hooks.append(block.register_forward_hook(
                lambda m, i, o, key=(s, b): blocks.__setitem__(key, o[0].numpy())))
            hooks.append(block.attention.self.register_forward_hook(
                lambda m, i, o, key=(s, b): patterns.__setitem__(key, o[1].numpy())))
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     input_features=torch.tensor(features), is_longer=torch.tensor(is_longer),
                     output_hidden_states=True, output_attentions=True)
            pooled = {"audio": out.audio_model_output.pooler_output.numpy(),
                      "text": out.text_model_output.pooler_output.numpy()}
            proj = {"audio": hf.audio_projection(out.audio_model_output.pooler_output).numpy(),
                    "text": hf.text_projection(out.text_model_output.pooler_output).numpy()}
    finally:
        for h in hooks:
            h.remove()
    return out, blocks, patterns, pooled, proj


@functools.cache
def run(name):
    """(HF reference, our outputs, our captures, our standalone audio outputs) for one config."""
    hf = tiny_hf_clap(name)
    features, is_longer, ids, mask = random_inputs(name)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)  # safetensors
        model, params = load_pretrained(d)
    forward = jax.jit(lambda p, *x: model.apply({"params": p}, *x, capture=CAPTURE))
    out, acts = forward(params, features, ids, mask, is_longer)
    audio = ClapAudioModel(model.config.audio_config)
    audio_out, _ = jax.jit(lambda p, *x: audio.apply({"params": p}, *x))(params["audio_model"], features, is_longer)
    return hf_reference(hf, features, is_longer, ids, mask), out, acts, audio_out, model, params


def tokens(x):
    """HF's reshaped ``[B, C, h, w]`` hidden state as our ``[B, h*w, C]``."""
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)


@pytest.mark.parametrize("name", NAMES)
def test_every_audio_block_and_pattern_matches(name):
    (ref, blocks, patterns, _, _), _, acts, _, model, _ = run(name)
    c = model.config.audio_config
    assert len(blocks) == c.num_blocks and len(patterns) == c.num_blocks
    for (s, b), expected in blocks.items():
        prefix = f"audio.stages.{s}.blocks.{b}"
        np.testing.assert_allclose(acts[f"{prefix}.resid_post"], expected, atol=ATOL, err_msg=prefix)
        pattern = np.asarray(acts[f"{prefix}.attn.pattern"])  # [B, windows, H, N, N]
        assert pattern.shape[1:] == (patterns[s, b].shape[0] // pattern.shape[0],) + patterns[s, b].shape[1:]
        np.testing.assert_allclose(pattern.reshape(patterns[s, b].shape), patterns[s, b], atol=ATOL,
                                   err_msg=f"{prefix} attention pattern")
    # HF's hidden states: the patch embedding, then each stage's output after its patch merging.
    hidden = ref.audio_model_output.hidden_states
    assert len(hidden) == c.num_stages + 1
    np.testing.assert_allclose(acts["audio.embed"], tokens(hidden[0].numpy()), atol=ATOL)
    np.testing.assert_allclose(acts["audio.stages.0.blocks.0.resid_pre"], tokens(hidden[0].numpy()), atol=ATOL)
    for s in range(c.num_stages):
        after = (f"audio.stages.{s + 1}.blocks.0.resid_pre" if s + 1 < c.num_stages
                 else f"audio.stages.{s}.blocks.{c.depths[s] - 1}.resid_post")
        np.testing.assert_allclose(acts[after], tokens(hidden[s + 1].numpy()), atol=ATOL, err_msg=f"stage {s}")


@pytest.mark.parametrize("name", NAMES)
def test_every_text_layer_matches(name):
    (ref, *_), _, acts, _, model, _ = run(name)
    hidden, attentions = ref.text_model_output.hidden_states, ref.text_model_output.attentions
    n = model.config.text_config.num_hidden_layers
    assert len(hidden) == n + 1 and len(attentions) == n
    np.testing.assert_allclose(acts["text.embed"], hidden[0], atol=ATOL)
    for i in range(n):
        np.testing.assert_allclose(acts[f"text.layers.{i}.resid_post"], hidden[i + 1], atol=ATOL, err_msg=f"layer {i}")
        np.testing.assert_allclose(acts[f"text.layers.{i}.attn.pattern"], attentions[i], atol=ATOL,
                                   err_msg=f"layer {i} attention pattern")


@pytest.mark.parametrize("name", NAMES)
def test_pooled_projections_embeds_and_logits_match(name):
    (ref, _, _, pooled, proj), out, acts, audio_out, _, _ = run(name)
    for tower in ("audio", "text"):
        np.testing.assert_allclose(acts[f"{tower}.pooled"], pooled[tower], atol=ATOL, err_msg=f"{tower} pooled")
        np.testing.assert_allclose(acts[f"{tower}.proj"], proj[tower], atol=ATOL, err_msg=f"{tower} projection")
    np.testing.assert_allclose(out["audio_embeds"], ref.audio_embeds, atol=ATOL)
    np.testing.assert_allclose(out["text_embeds"], ref.text_embeds, atol=ATOL)
    np.testing.assert_allclose(out["logits_per_audio"], ref.logits_per_audio, atol=ATOL)
    np.testing.assert_allclose(out["logits_per_text"], ref.logits_per_text, atol=ATOL)
    # Two scales: the logits are not each other's transpose (a swapped scale would fail above too).
    assert not np.allclose(out["logits_per_audio"], np.asarray(out["logits_per_text"]).T, atol=1e-3)
    # ClapAudioModel on its own: HF's regrouped last_hidden_state and pooler_output.
    np.testing.assert_allclose(audio_out["last_hidden_state"], ref.audio_model_output.last_hidden_state, atol=ATOL)
    np.testing.assert_allclose(audio_out["pooler_output"], pooled["audio"], atol=ATOL)


def test_fusion_applies_only_to_longer_clips():
    """Fused model: a clip not flagged ``is_longer`` ignores its local crops; ``is_longer=None``
    reads as no clip being longer; both agree with transformers."""
    hf = tiny_hf_clap("fused")
    features, _, ids, mask = random_inputs("fused", seed=1)
    *_, model, params = run("fused")
    encode = jax.jit(lambda f, il: model.apply({"params": params}, f, il, method="get_audio_features")[0])
    shorter = np.zeros((features.shape[0], 1), bool)
    other = features.copy()
    other[:, 1:] = np.random.default_rng(2).normal(size=other[:, 1:].shape)
    none = np.asarray(jax.jit(lambda f: model.apply({"params": params}, f, method="get_audio_features")[0])(features))
    # Separate programs: equal up to float rounding.
    np.testing.assert_allclose(none, encode(features, shorter), atol=1e-6)
    np.testing.assert_allclose(encode(features, shorter), encode(other, shorter), atol=1e-6)
    assert not np.allclose(encode(features, ~shorter), encode(other, ~shorter), atol=1e-3)
    with torch.no_grad():
        ref = hf.get_audio_features(input_features=torch.tensor(features), is_longer=torch.tensor(shorter))
    np.testing.assert_allclose(none, ref.pooler_output, atol=ATOL)


def test_transformers_configs_we_cannot_run_are_refused_with_the_field():
    from mrepe_jax.models.clap import ClapAudioConfig

    good = {k: v for k, v in CONFIGS["unfused"]["audio"].items()}
    with pytest.raises(ValueError, match=r"window_size 7 exceeds stage 1's \(6, 6\) resolution"):
        ClapAudioConfig.from_hf_dict({**good, "window_size": 7})
    with pytest.raises(ValueError, match="hidden_size 32 .* must equal the last stage's width"):
        ClapAudioConfig.from_hf_dict({**good, "hidden_size": 32})
    with pytest.raises(ValueError, match="channel_map"):
        ClapAudioConfig.from_hf_dict({**good, "enable_fusion": True, "fusion_type": "channel_map"})
    with pytest.raises(ValueError, match=r"the \(12, 12\) patch grid must halve evenly through 4 stages"):
        ClapAudioConfig.from_hf_dict({**good, "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1]})
    assert transformers.ClapAudioConfig(**good)  # the base config itself is one transformers runs


def test_bf16_tracks_fp32():
    features, is_longer, ids, mask = random_inputs("unfused")
    _, out, _, _, model, params = run("unfused")
    low = model.clone(dtype=jnp.bfloat16)
    out16, _ = jax.jit(lambda p: low.apply({"params": p}, features, ids, mask, is_longer))(params)
    assert out16["audio_embeds"].dtype == jnp.bfloat16
    for key in ("audio_embeds", "text_embeds"):
        a, b = np.asarray(out16[key], np.float32), np.asarray(out[key])
        assert (np.sum(a * b, -1) > 0.98).all(), key
