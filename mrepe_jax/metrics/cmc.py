"""Cross-modal consistency, CMC (eq 8): ``1/|D| sum_{(x_i, x_j) in D} sim(f(x_i), f(x_j))``.

``f`` is the model's output function. For a contrastive encoder that is its zero-shot output
distribution: a softmax, at the model's own ``logit_scale``, over the cosine similarities of an
embedding with a family's class-prompt embeddings (``zero_shot_distribution``). ``sim`` is
``1 - JSD`` with the Jensen-Shannon divergence in bits, so it lies in [0, 1]: 1 when two
modalities put the same probability on every value, 0 when their supports are disjoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrepe_jax.models.layers import normalize


def zero_shot_distribution(embeddings, prompts, logit_scale):
    """``[N, V]`` softmax over ``V`` class prompts ``[V, D]`` of ``logit_scale * cos(e, prompt)``."""
    embeddings, prompts = jnp.asarray(embeddings), jnp.asarray(prompts)
    if embeddings.ndim != 2 or prompts.ndim != 2 or embeddings.shape[1] != prompts.shape[1]:
        raise ValueError(f"zero-shot distribution needs embeddings [N, D] and prompts [V, D], got "
                         f"{embeddings.shape} and {prompts.shape}")
    return jax.nn.softmax(logit_scale * normalize(embeddings) @ normalize(prompts).T, axis=-1)


def _entropy_terms(p, m):
    # p log2(p / m) with 0 log 0 = 0; m >= p / 2 > 0 wherever p > 0, so the ratio is finite.
    safe = jnp.where(p > 0, p, 1.0)
    return jnp.where(p > 0, p * (jnp.log2(safe) - jnp.log2(jnp.where(p > 0, m, 1.0))), 0.0)


def js_divergence(p, q):
    """Jensen-Shannon divergence in bits along the last axis, in [0, 1]."""
    p, q = jnp.asarray(p), jnp.asarray(q)
    if p.shape != q.shape:
        raise ValueError(f"distributions must have one shape, got {p.shape} and {q.shape}")
    m = 0.5 * (p + q)
    jsd = 0.5 * jnp.sum(_entropy_terms(p, m), -1) + 0.5 * jnp.sum(_entropy_terms(q, m), -1)
    return jnp.clip(jsd, 0.0, 1.0)  # rounding can step a hair outside [0, 1]


def js_similarity(p, q):
    """``sim`` of eq 8: ``1 - JSD(p, q)`` (base 2), per row."""
    return 1.0 - js_divergence(p, q)


def cmc(f_i, f_j):
    """Eq 8: mean ``1 - JSD`` between paired output distributions ``f_i``/``f_j`` [N, V] (row n of
    each comes from the same semantically equivalent input). Also returns the per-pair values,
    which the paired significance tests use: ``(cmc, per_pair [N])``."""
    per_pair = js_similarity(f_i, f_j)
    return jnp.mean(per_pair), per_pair
