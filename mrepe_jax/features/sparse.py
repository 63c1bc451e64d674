"""Sparse kernels for TopK SAEs: after the selection, only each row's ``k`` chosen latents are
encoded, decoded and differentiated, never the dense ``[B, d_sae]`` latents (Gao et al. 2024,
"Scaling and evaluating sparse autoencoders", train with sparse decoder kernels for the same
reason; theirs are GPU kernels).

A dense TopK step runs five ``[B, d_in] x [d_in, d_sae]`` GEMMs; with these it runs one (the
encoder's forward, needed to select) and ``O(B k d_in)`` gathers and scatter-adds. Both functions
here loop over the ``k`` slots (``lax.fori_loop``), each slot one ``[B, d_in]`` row gather or
scatter-add: on XLA:CPU (2 cores) that decodes ``B = 1024, k = 32, d_in = 768`` in about 6 ms, where
one ``[B, k, d_in]`` gather takes about 50 ms and the dense GEMM about 100 ms.

Shapes: ``idx [B, k]`` latent indices (int32), ``z``/``vals [B, k]``; a weight matrix with a row
per latent (``W_dec [d_sae, d_in]``; the encoder's ``W_enc [d_in, d_sae]`` is handled transposed).
Each is a ``jax.custom_vjp`` whose backward pass is the same slot loop, so ``jax.grad`` of a loss
built from them costs what the forward does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def select(pre, k: int):
    """``(values, indices)``, each ``[..., k]``: the ``k`` largest entries of ``pre``'s last axis,
    in descending order (``lax.top_k``: on XLA:CPU a runtime top-k, 22 ms for ``[1024, 8192]``, k
    32, when its indices are used; not differentiated here: ``encode_rows`` carries the gradient)."""
    return jax.lax.top_k(jax.lax.stop_gradient(pre), k)


def _gather_sum(rows, z, idx):
    """``out[b] = sum_s z[b, s] * rows[idx[b, s]]``."""
    def body(s, acc):
        return acc + z[:, s, None] * jnp.take(rows, idx[:, s], axis=0)
    return jax.lax.fori_loop(0, idx.shape[1], body, jnp.zeros((idx.shape[0], rows.shape[1]), z.dtype))


def _gather_dot(rows, g, idx):
    """``out[b, s] = <g[b], rows[idx[b, s]]>``, ``[B, k]``."""
    def body(s, out):
        return out.at[:, s].set(jnp.sum(g * jnp.take(rows, idx[:, s], axis=0), -1))
    return jax.lax.fori_loop(0, idx.shape[1], body, jnp.zeros(idx.shape, g.dtype))


def _scatter_outer(shape, z, g, idx):
    """``out[j] = sum_{(b, s): idx[b, s] = j} z[b, s] * g[b]``, ``out`` of ``shape [n, d]``."""
    def body(s, acc):
        return acc.at[idx[:, s]].add(z[:, s, None] * g)
    return jax.lax.fori_loop(0, idx.shape[1], body, jnp.zeros(shape, g.dtype))


@jax.custom_vjp
def decode_rows(w_dec, z, idx):
    """``sum_s z[b, s] * w_dec[idx[b, s]]`` (``[B, d_in]``): the decoder on the selected latents
    only, i.e. ``z_dense @ w_dec`` for the ``z_dense`` that holds ``z`` at ``idx``."""
    return _gather_sum(w_dec, z, idx)


def _decode_fwd(w_dec, z, idx):
    return decode_rows(w_dec, z, idx), (w_dec, z, idx)


def _decode_bwd(res, g):
    w_dec, z, idx = res
    return _scatter_outer(w_dec.shape, z, g, idx), _gather_dot(w_dec, g, idx), None


decode_rows.defvjp(_decode_fwd, _decode_bwd)


@jax.custom_vjp
def encode_rows(w_enc, b_enc, xc, idx, vals):
    """The selected pre-activations ``vals [B, k]`` with the gradient of ``(xc @ w_enc +
    b_enc)[b, idx[b, s]]``: ``vals`` must be those values (``select`` of the dense pre-activations
    of the same ``w_enc``, ``b_enc``, ``xc``): the forward reuses them, and the backward pass
    scatters into ``w_enc``'s selected columns and ``b_enc``'s entries and gathers ``xc``'s
    gradient, never forming ``[B, d_sae]``. ``vals`` itself gets no gradient."""
    del w_enc, b_enc, xc, idx
    return vals


def _encode_fwd(w_enc, b_enc, xc, idx, vals):
    return vals, (w_enc, b_enc, xc, idx)


def _encode_bwd(res, g):
    w_enc, b_enc, xc, idx = res
    rows = w_enc.T  # a latent's weights as a row: the slot loops gather and scatter rows
    d_w = _scatter_outer(rows.shape, g, xc, idx).T
    d_b = jnp.zeros_like(b_enc).at[idx.reshape(-1)].add(g.reshape(-1))
    return d_w, d_b, _gather_sum(rows, g, idx), None, jnp.zeros_like(g)


encode_rows.defvjp(_encode_fwd, _encode_bwd)
