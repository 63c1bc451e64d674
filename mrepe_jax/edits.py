"""Interventions as pure pytrees (DESIGN.md §3): eq 5 (``Add``), eq 2's do() (``Replace``), eq 7
(``AttnBias``), plus mean/zero ablation and directional erasure.

Every edit is a ``flax.struct.dataclass`` whose array fields are pytree leaves, so a dict of edits
passed to ``model.apply`` can be ``jax.vmap``-ed over (many interventions in one compiled call),
differentiated (attribution patching) and changed without retracing.

``where`` is an optional boolean mask that selects the positions an edit touches. It broadcasts
against the site's activation with numpy's (right-aligned) rules, so with the layouts documented in
``mrepe_jax.sites``: ``where`` of shape ``[T, 1]`` selects tokens of a ``[B, T, D]`` residual,
``[B, 1, 1]`` selects batch rows, ``[H, 1]`` selects heads of a ``[B, T, H, Dh]`` ``attn.z``.
``token_mask`` / ``head_mask`` build the common cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct

Array = Any


def _check_broadcast(site: str, what: str, value, x) -> None:
    try:
        np.broadcast_shapes(np.shape(value), x.shape)
    except ValueError:
        raise ValueError(
            f"{what} of shape {tuple(np.shape(value))} does not broadcast to the activation at "
            f"site {site!r} of shape {tuple(x.shape)}"
        ) from None


def _select(where, new, old, site: str):
    if where is None:
        return new
    _check_broadcast(site, "where", where, old)
    return jnp.where(where, new, old)


@struct.dataclass
class Add:
    """Eq 5, ``I_direct(r) = r + alpha * Delta_c``: adds ``alpha * delta`` at the site."""

    delta: Array
    alpha: Array = 1.0
    where: Array | None = None

    def __call__(self, x, site: str):
        _check_broadcast(site, "Add.delta", self.delta, x)
        return _select(self.where, x + self.alpha * self.delta, x, site)


@struct.dataclass
class Replace:
    """Activation patching, the ``do(r = r')`` of eq 2: the site's value becomes ``value``."""

    value: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        _check_broadcast(site, "Replace.value", self.value, x)
        return _select(self.where, jnp.broadcast_to(self.value, x.shape).astype(x.dtype), x, site)


@struct.dataclass
class Ablate:
    """Mean ablation (zero ablation with the default ``mean=0``)."""

    mean: Array = 0.0
    where: Array | None = None

    def __call__(self, x, site: str):
        _check_broadcast(site, "Ablate.mean", self.mean, x)
        return _select(self.where, jnp.broadcast_to(self.mean, x.shape).astype(x.dtype), x, site)


@struct.dataclass
class Project:
    """Erases a direction: ``x - (x . u) u`` with ``u = direction / |direction|`` on the last axis."""

    direction: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        if np.shape(self.direction)[-1:] != x.shape[-1:]:
            raise ValueError(
                f"Project.direction of shape {tuple(np.shape(self.direction))} does not match the "
                f"feature axis of site {site!r} (activation shape {tuple(x.shape)})"
            )
        norm = jnp.linalg.norm(self.direction, axis=-1, keepdims=True)
        # A zero direction erases nothing, instead of turning the whole forward pass into NaN.
        u = self.direction / jnp.where(norm > 0, norm, 1.0)
        return _select(self.where, x - jnp.sum(x * u, axis=-1, keepdims=True) * u, x, site)


@struct.dataclass
class AttnBias:
    """Eq 7, ``softmax((Q K^T + M_c) / sqrt(d_k)) V``: adds ``mask`` to raw attention logits.

    Valid only at ``*.attn.logits`` sites, shape ``[batch, head, query, key]``. As the paper writes
    it, ``M_c`` is added *before* the ``1/sqrt(d_k)`` scaling, so a bias ``b`` shifts the softmax
    input by ``b / sqrt(d_k)``; ``-inf`` removes a key, ``0`` is the identity.
    """

    mask: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        _check_broadcast(site, "AttnBias.mask", self.mask, x)
        return _select(self.where, x + self.mask, x, site)


EDIT_TYPES = (Add, Replace, Ablate, Project, AttnBias)


def as_tuple(edit) -> tuple:
    return tuple(edit) if isinstance(edit, (tuple, list)) else (edit,)


def apply_edits(edit, x, site: str):
    """Applies one edit or a sequence of edits, in order, to the activation ``x`` at ``site``."""
    for e in as_tuple(edit):
        x = e(x, site)
    return x


def token_mask(num_tokens: int, tokens: int | Sequence[int]) -> np.ndarray:
    """``where`` selecting token positions of a ``[B, T, ...]`` activation: shape ``[T, 1]``."""
    m = np.zeros((num_tokens, 1), dtype=bool)
    m[np.asarray(tokens)] = True
    return m


def head_mask(num_heads: int, heads: int | Sequence[int]) -> np.ndarray:
    """``where`` selecting heads of a ``[B, T, H, Dh]`` activation: shape ``[H, 1]``."""
    m = np.zeros((num_heads, 1), dtype=bool)
    m[np.asarray(heads)] = True
    return m
