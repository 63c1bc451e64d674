"""Contrastive objectives: InfoNCE (eq 3) and the symmetric CLIP loss built from it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrepe_jax.models.clip import normalize


def info_nce(src_mapped, tgt, temperature, negatives=None):
    """Eq 3: ``-log exp(sim(phi(r_i), r_j)/tau) / sum_{r'_j in N} exp(sim(phi(r_i), r'_j)/tau)``.

    ``src_mapped`` [B, D] are the mapped source representations ``phi_{i->j}(r_i)``, ``tgt`` [B, D]
    their positives ``r_j`` (row b pairs with row b). ``sim`` is cosine similarity. The negative
    set ``N`` holds the positive itself plus, by default, every other target in the batch; extra
    ``negatives`` [M, D] (e.g. gathered from other data shards) are appended. Returns the mean loss.
    """
    if src_mapped.shape != tgt.shape or src_mapped.ndim != 2:
        raise ValueError(f"info_nce needs matching [B, D] inputs, got {src_mapped.shape} and {tgt.shape}")
    candidates = tgt if negatives is None else jnp.concatenate([tgt, negatives], axis=0)
    if candidates.shape[-1] != src_mapped.shape[-1]:
        raise ValueError(f"negatives of shape {negatives.shape} do not match features {src_mapped.shape}")
    logits = normalize(src_mapped) @ normalize(candidates).T / temperature
    positives = jnp.arange(src_mapped.shape[0])
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[positives, positives])


def clip_loss(a, b, logit_scale):
    """Symmetric InfoNCE between two modalities, CLIP's objective (temperature ``1/logit_scale``)."""
    t = 1.0 / logit_scale
    return 0.5 * (info_nce(a, b, t) + info_nce(b, a, t))
