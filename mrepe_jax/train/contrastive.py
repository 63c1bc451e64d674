"""Contrastive objectives: InfoNCE (eq 3), its symmetric form, and a data-parallel version of it.

Eq 3 (the paper's alignment objective) for one pair ``(r_i, r_j)``::

    L = -log  exp(sim(phi_{i->j}(r_i), r_j) / tau)  /  sum_{r'_j in N} exp(sim(phi_{i->j}(r_i), r'_j) / tau)

with ``sim`` the cosine similarity. ``info_nce`` averages it over a batch, ``clip_loss`` is the
symmetric (CLIP) form, and ``sharded_info_nce`` computes the same value with the batch rows split
over a mesh axis (``jax.shard_map``; each shard's rows meet every shard's targets through
``jax.lax.all_gather``, DESIGN.md §7).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.models.layers import normalize


def info_nce(src_mapped, tgt, temperature, negatives=None, *, symmetric: bool = False):
    """Eq 3: ``-log exp(sim(phi(r_i), r_j)/tau) / sum_{r'_j in N} exp(sim(phi(r_i), r'_j)/tau)``.

    Args:
      src_mapped: [B, D] mapped source representations ``phi_{i->j}(r_i)``.
      tgt: [B, D] their positives ``r_j`` (row b pairs with row b).
      temperature: ``tau`` > 0 (a scalar; may be traced, e.g. ``1 / logit_scale``, in which case
        its sign is not checked).
      negatives: optional [M, D] memory of extra negatives (M may be 0), e.g. a bank of earlier
        targets. The negative set ``N`` of a source row holds its positive, every other target in
        the batch, and these M rows. The memory is treated as a constant: it passes through
        ``jax.lax.stop_gradient`` here, so no gradient ever flows into it (callers keep it as a
        plain, stop-gradient'ed bank of arrays).
      symmetric: when True, the mean of the src->tgt loss above and the tgt->src loss (each target
        row as an anchor against every source row of the batch, its own pair as the positive).
        ``negatives`` only enter the src->tgt direction: they live in the target space.

    Returns:
      The mean loss over the batch, a scalar. Computed as ``logsumexp(logits) - positive logit``,
      so large ``1/tau`` does not overflow.
    """
    src_mapped, tgt, negatives = _validate("info_nce", src_mapped, tgt, temperature, negatives)
    s, t = normalize(src_mapped), normalize(tgt)
    rows = jnp.arange(s.shape[0])
    loss = jnp.mean(_terms(s, t, rows, temperature, negatives))
    if symmetric:
        loss = 0.5 * (loss + jnp.mean(_terms(t, s, rows, temperature, None)))
    return loss


def clip_loss(a, b, logit_scale):
    """Symmetric InfoNCE (eq 3 both ways) between two modalities, CLIP's objective (temperature
    ``1/logit_scale``)."""
    return info_nce(a, b, 1.0 / logit_scale, symmetric=True)


def sharded_info_nce(mesh, axis: str = parallel.DATA):
    """``info_nce`` (eq 3) with the batch rows split over the ``axis`` of ``mesh``.

    Returns ``loss(src_mapped, tgt, temperature, negatives=None, symmetric=False)``, with
    ``info_nce``'s signature and value. It runs under ``jax.shard_map`` (the mesh passed
    explicitly): each shard holds B/n rows of ``src_mapped`` and ``tgt``, gathers every shard's
    (normalized) targets with ``jax.lax.all_gather(..., tiled=True)`` (and every shard's sources
    for the symmetric term), computes the loss terms of its own rows against the full batch plus
    the replicated (``jax.P()``) memory ``negatives``, and sums them; a ``psum`` over ``axis``
    divided by B gives the batch mean. The value equals ``info_nce`` on the full batch, and so does
    ``jax.grad`` through it (the all-gather's transpose sends each shard's gradient contributions
    back to the rows' owners). Works inside and outside ``jax.jit``.

    The batch size B must be divisible by the size of ``axis`` (a ValueError names both).
    """
    n = parallel.data_axis_size(mesh, axis)  # also rejects a mesh without ``axis``

    def loss(src_mapped, tgt, temperature, negatives=None, symmetric: bool = False):
        src_mapped, tgt, negatives = _validate("sharded_info_nce", src_mapped, tgt, temperature,
                                               negatives)
        batch = src_mapped.shape[0]
        if batch % n:
            raise ValueError(f"sharded_info_nce: batch size {batch} is not divisible by the {axis!r} "
                             f"mesh axis size {n}; use a batch size divisible by {n}")
        temperature = jnp.asarray(temperature, src_mapped.dtype)
        if temperature.ndim:
            raise ValueError(f"temperature must be a scalar, got shape {temperature.shape}")

        def local(s, t, tau, *memory):
            s, t = normalize(s), normalize(t)
            rows = jax.lax.axis_index(axis) * s.shape[0] + jnp.arange(s.shape[0])
            all_t = jax.lax.all_gather(t, axis, tiled=True)
            total = jnp.sum(_terms(s, all_t, rows, tau, memory[0] if memory else None))
            if symmetric:
                all_s = jax.lax.all_gather(s, axis, tiled=True)
                total = 0.5 * (total + jnp.sum(_terms(t, all_s, rows, tau, None)))
            return jax.lax.psum(total, axis) / batch

        args = (src_mapped, tgt, temperature) + (() if negatives is None else (negatives,))
        specs = (jax.P(axis), jax.P(axis), jax.P()) + (() if negatives is None else (jax.P(),))
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=jax.P())(*args)

    return loss


def _terms(anchors, candidates, positive_cols, temperature, negatives):
    """Per-anchor eq 3 terms: ``logsumexp_c(a.c / tau) - a.c_pos / tau`` over the candidates
    (``candidates`` then normalized ``negatives``); ``positive_cols[k]`` is anchor k's positive
    column in ``candidates``. Inputs other than ``negatives`` are already normalized."""
    if negatives is not None:
        candidates = jnp.concatenate([candidates, normalize(negatives)], axis=0)
    logits = anchors @ candidates.T / temperature
    positive = jnp.take_along_axis(logits, positive_cols[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - positive


def _validate(name, src_mapped, tgt, temperature, negatives):
    src_mapped, tgt = jnp.asarray(src_mapped), jnp.asarray(tgt)
    if src_mapped.shape != tgt.shape or src_mapped.ndim != 2:
        raise ValueError(f"{name} needs matching [B, D] inputs, got {src_mapped.shape} and {tgt.shape}")
    if src_mapped.shape[0] == 0:
        raise ValueError(f"{name} needs at least one row, got inputs of shape {src_mapped.shape}")
    if negatives is not None:
        negatives = jnp.asarray(negatives)
        if negatives.ndim != 2 or negatives.shape[1] != src_mapped.shape[1]:
            raise ValueError(f"{name}: negatives must be [M, D] with D={src_mapped.shape[1]} to "
                             f"match inputs {src_mapped.shape}, got {negatives.shape}")
        negatives = jax.lax.stop_gradient(negatives)
    if not isinstance(temperature, jax.core.Tracer):
        # numpy, not jnp: under a jit trace jnp.asarray of a Python float is itself a tracer.
        tau = np.asarray(temperature)
        if tau.ndim:
            raise ValueError(f"{name}: temperature must be a scalar, got shape {tau.shape}")
        if not float(tau) > 0:
            raise ValueError(f"{name}: temperature must be positive, got {float(tau)}")
    return src_mapped, tgt, negatives
