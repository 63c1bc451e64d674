"""Multi-head dot-product attention with every intermediate exposed as a site.

Shared by every tower (CLIP, the ToyWorld audio ViT, and later the Q-Former / OPT): the projections
differ between families, the attention arithmetic and its site contract do not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrepe_jax.sites import Sites


def split_heads(x, num_heads: int):
    """``[B, T, D] -> [B, T, H, D/H]``."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads)


def dot_product_attention(module, sites: Sites, prefix: str, q, k, v, mask=None):
    """Attention over ``[B, T, H, Dh]`` inputs; returns ``z`` of shape ``[B, Tq, H, Dh]``.

    Sites (``prefix`` is e.g. ``vision.layers.3.attn``): ``.q .k .v``, ``.logits`` (raw ``Q K^T``,
    before the ``1/sqrt(d_k)`` scaling, where eq 7's ``M_c`` is added), ``.pattern`` (softmax
    weights) and ``.z`` (per-head outputs before the output projection). ``mask`` is a boolean
    ``[B or 1, 1 or H, Tq, Tk]`` array, True where attention is allowed.
    """
    q = sites(module, f"{prefix}.q", q)
    k = sites(module, f"{prefix}.k", k)
    v = sites(module, f"{prefix}.v", v)
    # Head-major [B, H, T, Dh] for the two attention matmuls: XLA:CPU runs these batched matmuls
    # about 2x faster than the equivalent token-major einsums. Sites keep the documented layouts.
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2))
    logits = sites(module, f"{prefix}.logits", logits)
    scores = logits * (q.shape[-1] ** -0.5)
    if mask is not None:
        # The dtype's minimum, not -inf, so a fully masked row (left padding) stays finite, as in HF.
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    pattern = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    pattern = sites(module, f"{prefix}.pattern", pattern)
    z = jnp.matmul(pattern, vh).transpose(0, 2, 1, 3)
    return sites(module, f"{prefix}.z", z)


def causal_mask(num_tokens: int):
    """``[1, 1, T, T]``, True on and below the diagonal."""
    return jnp.tril(jnp.ones((num_tokens, num_tokens), dtype=bool))[None, None]


def padding_mask(attention_mask):
    """``[B, T]`` 1/0 token mask -> ``[B, 1, 1, T]`` boolean key mask."""
    return attention_mask.astype(bool)[:, None, None, :]
