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


def use_fused(execution: Execution, site, block: str) -> bool:
    """Whether ``block`` (``attn``, ``xattn``) may run as one fused kernel: the option allows it
    and none of its sites is edited or captured (``site.touches``)."""
    fused = execution.attention == "fused" or (
        execution.attention == "auto" and jax.default_backend() == "gpu")
    return fused and not site.touches(block)


def dot_product_attention(site, block: str, q, k, v, mask=None, fused: bool = False):
    """Attention over ``[B, T, H, Dh]`` inputs; returns ``z`` of shape ``[B, Tq, H, Dh]``.

    ``site(point, x)`` applies the layer's edits and captures (``sites.LayerSites``). Sites, with
    ``block`` e.g. ``attn``: ``.q .k .v``, ``.logits`` (raw ``Q K^T``, before the ``1/sqrt(d_k)``
    scaling, where eq 7's ``M_c`` is added), ``.pattern`` (softmax weights) and ``.z`` (per-head
    outputs before the output projection). ``mask`` is a boolean ``[B or 1, 1 or H, Tq, Tk]``
    array, True where attention is allowed. ``fused`` (see ``use_fused``) skips the sites and
    calls ``jax.nn.dot_product_attention``: the same arithmetic, one kernel on GPU.
    """
    if fused:
        return jax.nn.dot_product_attention(q, k, v, mask=mask)
    q = site(f"{block}.q", q)
    k = site(f"{block}.k", k)
    v = site(f"{block}.v", v)
    # Head-major [B, H, T, Dh] for the two attention matmuls: XLA:CPU runs these batched matmuls
    # about 2x faster than the equivalent token-major einsums. Sites keep the documented layouts.
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    logits = site(f"{block}.logits", jnp.matmul(qh, kh.swapaxes(-1, -2)))
    scores = logits * (q.shape[-1] ** -0.5)
    if mask is not None:
        # The dtype's minimum, not -inf, so a fully masked row (left padding) stays finite, as in HF.
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    pattern = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    pattern = site(f"{block}.pattern", pattern)
    z = jnp.matmul(pattern, vh).transpose(0, 2, 1, 3)
    return site(f"{block}.z", z)


def causal_mask(num_tokens: int):
    """``[1, 1, T, T]``, True on and below the diagonal."""
    return jnp.tril(jnp.ones((num_tokens, num_tokens), dtype=bool))[None, None]


def padding_mask(attention_mask):
    """``[B, T]`` 1/0 token mask -> ``[B, 1, 1, T]`` boolean key mask."""
    return attention_mask.astype(bool)[:, None, None, :]
