"""TextSpan: a greedy basis of texts for one attention head's outputs (Gandelsman et al., ICLR 2024).

Algorithm 1 of "Interpreting CLIP's Image Representation via Text-Based Decomposition", as their
code runs it (github.com/yossigandelsman/clip_text_span, ``compute_complete_text_set.py``,
``replace_with_iterative_removal``). Given a head's outputs ``C [N, D']`` over N images (its terms of
``decompose.Decomposition.heads()``) and candidate text embeddings ``T [M, D']``:

1. ``V``: the top-``rank`` right singular vectors of ``C`` (as the code does, of the *uncentred*
   outputs; ``center_svd=True`` takes them of the centred ones). Every text is projected onto their
   span, ``T <- T V^T V`` (the code's ``V^T (V V^T)^-1 V`` with orthonormal rows of ``V``).
2. Centre the outputs, ``C <- C - mean(C)``; the reconstruction starts at that mean.
3. ``m`` times: score every text by the standard deviation over images of ``C t`` (``t`` as
   projected, *not* unit-normed: a text with a longer projection onto the head's span scores
   higher, as in the code) and pick the best; remove its direction ``t / |t|`` from the outputs
   and from every text (which takes the picked text itself to zero, so it is not picked again).

``variance[j]``: the variance (over images, ``1/N``) of the outputs along the j-th picked text's
direction at the time it was picked, i.e. what removing it took away; these add up to at most
``total_variance``, the summed per-feature variance of the head's outputs. ``reconstruction``: the
mean plus every removed component, TextSpan's ``reconstruct`` (what their completeness test puts in
place of the head's outputs). ``text_span`` is one head; ``jax.vmap`` it over heads.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = Any
# Variance scores are compared by argmax: keep TF32 / bf16 passes from reordering close ones.
PRECISION = jax.lax.Precision.HIGHEST


@struct.dataclass
class TextBasis:
    """``indices [m]``: the picked texts, in order; ``variance [m]``: the variance each removed;
    ``total_variance []``: of the head's outputs; ``reconstruction [N, D']``."""

    indices: Array
    variance: Array
    total_variance: Array
    reconstruction: Array

    def explained(self):
        """The fraction of the head's variance each picked text removed, ``[m]``."""
        return self.variance / self.total_variance


@functools.partial(jax.jit, static_argnames=("num_texts", "rank", "center_svd"))
def text_span(outputs, texts, num_texts: int, rank: int, center_svd: bool = False) -> TextBasis:
    """TextSpan's ``num_texts`` texts for one head (module docstring). ``outputs [N, D']``: the
    head's outputs over N examples; ``texts [M, D']``: candidate text embeddings; ``rank``: how many
    singular vectors span the head's output space (TextSpan's ``w_ov_rank``, 80 by default)."""
    outputs = outputs.astype(jnp.float32)
    mean = outputs.mean(0)
    centred = outputs - mean
    _, _, vh = jnp.linalg.svd(centred if center_svd else outputs, full_matrices=False)
    vh = vh[:rank]
    texts = jnp.matmul(jnp.matmul(texts.astype(jnp.float32), vh.T, precision=PRECISION), vh,
                       precision=PRECISION)

    def step(carry, _):
        data, cands, recon = carry
        proj = jnp.matmul(data, cands.T, precision=PRECISION)  # [N, M]
        best = jnp.argmax(proj.std(0))
        t = cands[best]
        norm2 = t @ t
        # A zero text is only picked when nothing varies along any text: remove nothing then.
        unit = jnp.where(norm2 > 0, t / jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0)
        along = jnp.matmul(data, unit, precision=PRECISION)  # [N]
        removed = along[:, None] * unit
        cands = cands - jnp.matmul(cands, unit, precision=PRECISION)[:, None] * unit
        return (data - removed, cands, recon + removed), (best, (along ** 2).mean())

    init = (centred, texts, jnp.broadcast_to(mean, outputs.shape))
    (_, _, recon), (indices, variance) = jax.lax.scan(step, init, None, length=num_texts)
    return TextBasis(indices, variance, (centred ** 2).mean(0).sum(), recon)
