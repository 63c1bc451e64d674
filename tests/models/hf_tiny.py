"""Tiny random transformers CLIP models for parity tests, with EVERY tensor re-randomised.

HF's init zeroes biases and sets LayerNorm to (1, 0), which would hide a swapped bias, a missing
LayerNorm scale or a wrong epsilon; random values everywhere make each parameter observable.
"""

import numpy as np
import torch
import transformers


def tiny_hf_clip(seed: int = 0, *, eos_token_id: int = 99, hidden_act: str = "quick_gelu",
                 layers: int = 2, vocab_size: int = 100, image_size: int = 16, patch_size: int = 8,
                 hidden: int = 32, heads: int = 4, max_positions: int = 12):
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, hidden_act=hidden_act, layer_norm_eps=1e-5)
    config = transformers.CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, max_position_embeddings=max_positions,
                         eos_token_id=eos_token_id, bos_token_id=0, pad_token_id=1),
        vision_config=dict(common, image_size=image_size, patch_size=patch_size),
        projection_dim=16,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(1.3)
            elif "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def random_batch(model, seed: int = 0, batch: int = 3, tokens: int = 8, lengths=None):
    """Pixels (NCHW, as torch wants), ids with an EOS per row, and a 1/0 attention mask."""
    rng = np.random.default_rng(seed)
    v, t = model.config.vision_config, model.config.text_config
    pixels = rng.normal(size=(batch, 3, v.image_size, v.image_size)).astype(np.float32)
    lengths = [tokens] * batch if lengths is None else lengths
    eos = t.eos_token_id
    ids = np.full((batch, tokens), t.pad_token_id, dtype=np.int64)
    mask = np.zeros((batch, tokens), dtype=np.int64)
    for b, n in enumerate(lengths):
        if eos == 2:  # legacy configs: EOS is the largest id, pooled by argmax
            body = rng.integers(3, t.vocab_size - 1, size=n - 1)
            ids[b, : n - 1] = body
            ids[b, n - 1] = t.vocab_size - 1
        else:  # ids above EOS make argmax pooling wrong, so the first-EOS branch is really tested
            body = rng.integers(3, t.vocab_size, size=n - 1)
            body[body == eos] = eos + 1
            ids[b, : n - 1] = body
            ids[b, n - 1] = eos
        mask[b, :n] = 1
    return pixels, ids, mask
