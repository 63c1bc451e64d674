"""Tiny random transformers ``ClapModel``s for parity tests, with EVERY tensor re-randomised.

HF's init zeroes biases, sets LayerNorm and BatchNorm to (1, 0) with running statistics (0, 1) and
zeroes the relative position tables, which would hide a swapped bias, a missing norm, a
mis-indexed bias table or an unused running statistic; random values everywhere make each one
observable. The two logit scales differ, so swapping them fails.

Two configs whose geometry differs everywhere it can:

- ``unfused``: 16 mel bins folded by 3 into a 48x48 image, 4x4 patches (12x12 grid), depths (1, 2),
  window 5: both stages pad their grid to whole windows, and stage 1's second block shifts by 2
  over a padded grid. Text: 2 layers, exact gelu.
- ``fused``: 8 mel bins folded by 4 into a 32x32 image, 4x4 patches with stride 2 (padding 1, 16x16
  grid), depths (2, 1, 1) and heads (1, 2, 4), window 4: stage 0 shifts, stage 2's 4x4 grid is one
  window (no shift, as HF forces), the fusion branch pads the local crops' width 12 to 16. Text:
  3 layers, 4 heads, tanh gelu, gelu projection.

Both feed fewer frames than the image takes (100 < 144, 90 < 128), so the bicubic time resize runs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import transformers

CONFIGS = {
    "unfused": dict(
        audio=dict(window_size=5, num_mel_bins=16, spec_size=48, patch_size=4, patch_stride=[4, 4], depths=[1, 2],
                   num_attention_heads=[2, 4], patch_embeds_hidden_size=8, hidden_size=16, mlp_ratio=2.0,
                   enable_fusion=False, hidden_act="gelu", layer_norm_eps=1e-5),
        text=dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                  max_position_embeddings=20, hidden_act="gelu", layer_norm_eps=1e-12, type_vocab_size=1),
        top=dict(projection_dim=8, projection_hidden_act="relu", logit_scale_init_value=10.0),
        frames=100,
    ),
    "fused": dict(
        audio=dict(window_size=4, num_mel_bins=8, spec_size=32, patch_size=4, patch_stride=[2, 2], depths=[2, 1, 1],
                   num_attention_heads=[1, 2, 4], patch_embeds_hidden_size=8, hidden_size=32, mlp_ratio=4.0,
                   enable_fusion=True, fusion_type=None, aff_block_r=4, hidden_act="gelu", layer_norm_eps=1e-4),
        text=dict(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=24, hidden_act="gelu_new", layer_norm_eps=1e-5, type_vocab_size=2),
        top=dict(projection_dim=16, projection_hidden_act="gelu", logit_scale_init_value=20.0),
        frames=90,
    ),
}
BATCH, TOKENS = 3, 8


def hf_config(name: str) -> transformers.ClapConfig:
    spec = CONFIGS[name]
    config = transformers.ClapConfig(text_config=spec["text"], audio_config=spec["audio"], **spec["top"])
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    return config


@functools.cache
def tiny_hf_clap(name: str, seed: int = 0) -> transformers.ClapModel:
    torch.manual_seed(seed)
    model = transformers.ClapModel(hf_config(name)).eval()
    batch_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    layer_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for key, t in model.state_dict().items():
            module, _, leaf = key.rpartition(".")
            if not t.is_floating_point():
                continue  # index buffers, num_batches_tracked
            if leaf == "logit_scale_a":
                t.fill_(1.3)
            elif leaf == "logit_scale_t":
                t.fill_(0.7)
            elif module in batch_norms and leaf == "running_var":
                t.copy_(0.5 + torch.rand_like(t))
            elif (module in batch_norms or module in layer_norms) and leaf == "weight":
                t.copy_(1.0 + 0.3 * torch.randn_like(t))
            elif module in batch_norms or module in layer_norms:
                t.copy_(0.3 * torch.randn_like(t))
            elif leaf == "relative_position_bias_table":
                t.copy_(0.5 * torch.randn_like(t))
            else:
                t.copy_(0.15 * torch.randn_like(t))
    return model


def random_inputs(name: str, seed: int = 0, lengths=(8, 5, 3), is_longer=(True, False, True)):
    """(features [B, C, T, F], is_longer [B, 1] bool, ids [B, T], mask [B, T]): RoBERTa ids as its
    tokenizer lays them out (``<s>`` 0, body, ``</s>`` 2, padding 1)."""
    spec = CONFIGS[name]
    a, t = spec["audio"], spec["text"]
    rng = np.random.default_rng(seed)
    channels = 4 if a["enable_fusion"] else 1
    features = rng.normal(size=(BATCH, channels, spec["frames"], a["num_mel_bins"])).astype(np.float32)
    ids = np.ones((BATCH, TOKENS), np.int64)
    mask = np.zeros((BATCH, TOKENS), np.int64)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = 0, 2
        ids[b, 1:n - 1] = rng.integers(3, t["vocab_size"], size=n - 2)
        mask[b, :n] = 1
    return features, np.asarray(is_longer, bool)[:, None], ids, mask
