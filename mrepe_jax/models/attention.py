"""Multi-head dot-product attention with every intermediate exposed as a site.

Shared by every tower (CLIP, the ToyWorld audio ViT, and later the Q-Former / OPT): the projections
differ between families, the attention arithmetic and its site contract do not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrepe_jax.models.execution import Execution


def split_heads(x, num_heads: int):
    """``[B, T, D] -> [B, T, H, D/H]``."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads)


def use_fused(execution: Execution) -> bool:
    """Whether attention whose sites are untouched (``LayerSites.touches``) runs as one fused
    ``jax.nn.dot_product_attention`` kernel: ``"fused"``, or ``"auto"`` on GPU."""
    return execution.attention == "fused" or (
        execution.attention == "auto" and jax.default_backend() == "gpu")


def dot_product_attention(site, block: str, q, k, v, mask=None):
    """Attention over ``[B, T, H, Dh]`` inputs; returns ``z`` of shape ``[B, Tq, H, Dh]``.

    ``site(point, x)`` applies the layer's edits and captures (``sites.LayerSites``). Sites, with
    ``block`` e.g. ``attn``: ``.q .k .v``, ``.logits`` (raw ``Q K^T``, before the ``1/sqrt(d_k)``
    scaling, where eq 7's ``M_c`` is added), ``.pattern`` (softmax weights) and ``.z`` (per-head
    outputs before the output projection). ``mask`` is a boolean ``[B or 1, 1 or H, Tq, Tk]``
    array, True where attention is allowed. Layers whose attention sites are all untouched use
    ``packed_attention`` instead.
    """
    q = site(f"{block}.q", q)
    k = site(f"{block}.k", k)
    v = site(f"{block}.v", v)
    # Head-major [B, H, T, Dh] for the two attention matmuls: XLA:CPU runs these batched matmuls
    # about 2x faster than the equivalent token-major einsums. Sites keep the documented layouts.
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    z = _attend(qh, kh, vh, mask, site, block).transpose(0, 2, 1, 3)
    return site(f"{block}.z", z)


def _attend(qh, kh, vh, mask, site=None, block: str = "attn"):
    """``softmax(Q K^T / sqrt(d_k)) V`` over head-major ``[B, H, T, Dh]`` inputs, with the
    ``.logits`` and ``.pattern`` sites applied when ``site`` is given."""
    tap = site if site is not None else (lambda _, x: x)
    logits = tap(f"{block}.logits", jnp.matmul(qh, kh.swapaxes(-1, -2)))
    scores = logits * (qh.shape[-1] ** -0.5)
    if mask is not None:
        # The dtype's minimum, not -inf, so a fully masked row (left padding) stays finite, as in HF.
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    pattern = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(vh.dtype)
    return jnp.matmul(tap(f"{block}.pattern", pattern), vh)


def packed_attention(qkv, num_heads: int, mask=None, fused: bool = False):
    """Self-attention from a packed ``[B, T, 3D]`` q/k/v projection, for layers whose attention has
    no edited or captured site; returns ``[B, T, D]`` (heads merged).

    The arithmetic of ``dot_product_attention`` without the site-shaped ``[B, T, H, Dh]``
    intermediates: one transpose takes q, k and v head-major together (10 % faster than three in a
    one-layer XLA:CPU microbenchmark; within noise in the ToyWorld train step). ``fused``: one
    ``jax.nn.dot_product_attention`` call instead (cuDNN flash attention on GPU).
    """
    b, t, three_d = qkv.shape
    d = three_d // 3
    qkv = qkv.reshape(b, t, 3, num_heads, d // num_heads)
    if fused:
        z = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask)
        return z.reshape(b, t, d)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
    return _attend(q, k, v, mask).transpose(0, 2, 1, 3).reshape(b, t, d)


def self_attention(site, qkv, num_heads: int, mask, execution: Execution):
    """Self-attention from a packed ``[B, T, 3D]`` q/k/v projection (q, k, v the consecutive
    ``D``-wide thirds), heads merged ``[B, T, D]``: through every ``attn.*`` site when the layer's
    attention is edited or captured (``site.touches("attn")``), else ``packed_attention``."""
    if site.touches("attn"):
        q, k, v = (split_heads(t, num_heads) for t in jnp.split(qkv, 3, axis=-1))
        return dot_product_attention(site, "attn", q, k, v, mask).reshape(qkv.shape[:-1] + (-1,))
    return packed_attention(qkv, num_heads, mask, use_fused(execution))


def causal_mask(num_tokens: int):
    """``[1, 1, T, T]``, True on and below the diagonal."""
    return jnp.tril(jnp.ones((num_tokens, num_tokens), dtype=bool))[None, None]


def padding_mask(attention_mask):
    """``[B, T]`` 1/0 token mask -> ``[B, 1, 1, T]`` boolean key mask."""
    return attention_mask.astype(bool)[:, None, None, :]
