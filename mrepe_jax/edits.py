"""Interventions as pure pytrees (DESIGN.md §3): eq 5 (``Add``), eq 2's do() (``Replace``), eq 7
(``AttnBias``), plus mean/zero ablation and directional erasure.

Every edit is a ``flax.struct.dataclass`` whose array fields are pytree leaves, so a dict of edits
passed to ``model.apply`` can be ``jax.vmap``-ed over (many interventions in one compiled call),
differentiated (attribution patching) and changed without retracing.

Operands and axes. An edit's arrays (``delta``, ``value``, ``mean``, ``direction``, ``mask``,
``alpha`` and the boolean ``where`` that selects the positions an edit touches) meet the site's
activation, whose axes are named in ``mrepe_jax.sites`` (``site_axes``): ``[batch, token, feature]``
for residuals, ``[batch, token, head, feature]`` for ``attn.q/k/v/z``, ``[batch, head, query, key]``
for ``attn.logits/pattern``, ``[batch, feature]`` for ``pooled``/``proj``. An operand is one of

- a scalar;
- a vector along the last axis (``[D]``: a direction, a feature mask, a key bias at ``logits``);
- an array with the activation's full rank, each axis of size 1 or the activation's size;
- ``along(value, *axes)``: an array whose axes are named, e.g. ``along(d, "batch", "feature")`` for
  one direction per example, or the masks ``token_mask``/``head_mask``/``axis_mask`` build.

Anything else is refused as ambiguous: numpy's right-aligned broadcasting would let a ``[T, 1]``
token mask line up with the ``[H, Dh]`` axes of a head site, or a ``[B, D]`` per-example direction
with ``[T, D]``. No operand may grow the activation, and an edit returns the activation's shape and
dtype. Named masks combine with ``&``: ``token_mask(T, 3) & head_mask(H, 1)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mrepe_jax.layouts import site_axes

Array = Any


@struct.dataclass
class Along:
    """An edit operand whose axis ``i`` is the site's axis named ``axes[i]`` (see ``along``)."""

    value: Array
    axes: tuple[str, ...] = struct.field(pytree_node=False)

    def __and__(self, other: Along) -> Along:
        """The outer AND of two boolean masks over the union of their axes."""
        if not isinstance(other, Along):
            raise TypeError(f"can only combine named masks (along(...)), got {type(other).__name__}")
        axes = self.axes + tuple(a for a in other.axes if a not in self.axes)
        return Along(_to_axes(self, axes) & _to_axes(other, axes), axes)


def along(value: Array, *axes: str) -> Along:
    """Names the axes of ``value``: ``along(directions [B, D], "batch", "feature")``."""
    if np.ndim(value) != len(axes):
        raise ValueError(f"along: value of shape {tuple(np.shape(value))} needs one axis name per "
                         f"dimension, got {axes}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"along: repeated axis name in {axes}")
    return Along(value, tuple(axes))


def _to_axes(operand: Along, axes: tuple[str, ...]):
    """``operand.value`` transposed and expanded (size-1 axes) to the axis order ``axes``."""
    present = [a for a in axes if a in operand.axes]
    v = jnp.transpose(jnp.asarray(operand.value), [operand.axes.index(a) for a in present])
    sizes = iter(v.shape)
    return v.reshape([next(sizes) if a in operand.axes else 1 for a in axes])


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def resolve(operand, x, site: str, what: str):
    """``operand`` as an array of ``x``'s rank that broadcasts to ``x.shape`` without growing it."""
    if operand is None:
        return None
    if isinstance(operand, Along):
        axes = site_axes(site)
        unknown = [a for a in operand.axes if a not in axes]
        if unknown or np.ndim(operand.value) != len(operand.axes):
            raise ValueError(
                f"{what} names axes {operand.axes} (value shape {_shape(operand.value)}) but site "
                f"{site!r} has axes {axes}" + (f"; no axis {unknown[0]!r} there" if unknown else "")
            )
        value = _to_axes(operand, axes)
    else:
        value = operand
        nd = np.ndim(value)
        if nd > x.ndim:
            raise ValueError(
                f"{what} of shape {_shape(value)} has more axes than the activation at site "
                f"{site!r} of shape {_shape(x)}: an edit never changes the activation's shape"
            )
        if nd not in (0, 1, x.ndim):
            axes = site_axes(site)
            raise ValueError(
                f"{what} of shape {_shape(value)} is ambiguous at site {site!r} of shape "
                f"{_shape(x)} (axes {axes}): give a scalar, a [{axes[-1]}] vector of size "
                f"{x.shape[-1]}, an array of rank {x.ndim}, or name its axes with "
                f"edits.along(value, ...)"
            )
    vs = _shape(value)
    pad = (1,) * (x.ndim - len(vs))
    if any(v not in (1, n) for v, n in zip(pad + vs, x.shape)):
        raise ValueError(
            f"{what} of shape {_shape(operand.value if isinstance(operand, Along) else operand)} "
            f"does not fit the activation at site {site!r} of shape {_shape(x)}: every axis must "
            "be 1 or the activation's size (an edit never changes the activation's shape)"
        )
    return value


def select(where, new, old, site: str):
    """``new`` where the boolean mask ``where`` holds (everywhere when None), else ``old``: how
    every edit limits itself to the positions it names."""
    new = new.astype(old.dtype)
    if where is None:
        return new
    dtype = jnp.result_type(where.value if isinstance(where, Along) else where)
    if dtype != jnp.bool_:
        raise ValueError(f"where at site {site!r} must be a boolean mask, got dtype {dtype}")
    return jnp.where(resolve(where, old, site, "where"), new, old)


class Edit:
    """What every edit is: a pytree (``flax.struct.dataclass``) called as ``edit(x, site)`` at a
    site, returning the edited activation. The built-ins below and the edits of other packages
    (``features.edits``: an SAE latent clamped) subclass it, so ``Sites`` accepts them all."""

    def __call__(self, x, site: str):
        raise NotImplementedError


@struct.dataclass
class Add(Edit):
    """Eq 5, ``I_direct(r) = r + alpha * Delta_c``: adds ``alpha * delta`` at the site."""

    delta: Array
    alpha: Array = 1.0
    where: Array | None = None

    def __call__(self, x, site: str):
        delta = resolve(self.delta, x, site, "Add.delta")
        alpha = resolve(self.alpha, x, site, "Add.alpha")
        return select(self.where, x + alpha * delta, x, site)


@struct.dataclass
class Replace(Edit):
    """Activation patching, the ``do(r = r')`` of eq 2: the site's value becomes ``value``."""

    value: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        value = resolve(self.value, x, site, "Replace.value")
        return select(self.where, jnp.broadcast_to(value, x.shape), x, site)


@struct.dataclass
class Ablate(Edit):
    """Mean ablation (zero ablation with the default ``mean=0``)."""

    mean: Array = 0.0
    where: Array | None = None

    def __call__(self, x, site: str):
        mean = resolve(self.mean, x, site, "Ablate.mean")
        return select(self.where, jnp.broadcast_to(mean, x.shape), x, site)


@struct.dataclass
class Project(Edit):
    """Erases a direction: ``x - (x . u) u`` with ``u = direction / |direction|`` on the last axis.

    ``direction`` is one ``[D]`` vector, or one per example as ``along(d [B, D], "batch",
    "feature")`` (or per token, per head, ... by naming those axes).
    """

    direction: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        d = resolve(self.direction, x, site, "Project.direction")
        if np.ndim(d) == 0 or d.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"Project.direction of shape {_shape(d)} does not span the feature axis of site "
                f"{site!r} (activation shape {_shape(x)})"
            )
        norm = jnp.linalg.norm(d, axis=-1, keepdims=True)
        # A zero direction erases nothing, instead of turning the whole forward pass into NaN.
        u = d / jnp.where(norm > 0, norm, 1.0)
        return select(self.where, x - jnp.sum(x * u, axis=-1, keepdims=True) * u, x, site)


@struct.dataclass
class AttnBias(Edit):
    """Eq 7, ``softmax((Q K^T + M_c) / sqrt(d_k)) V``: adds ``mask`` to raw attention logits.

    Valid only at ``*.attn.logits`` sites, axes ``[batch, head, query, key]``. As the paper writes
    it, ``M_c`` is added *before* the ``1/sqrt(d_k)`` scaling, so a bias ``b`` shifts the softmax
    input by ``b / sqrt(d_k)``; ``-inf`` removes a key, ``0`` is the identity.
    """

    mask: Array
    where: Array | None = None

    def __call__(self, x, site: str):
        return select(self.where, x + resolve(self.mask, x, site, "AttnBias.mask"), x, site)


EDIT_TYPES = (Add, Replace, Ablate, Project, AttnBias)  # the built-ins; any ``Edit`` is accepted


@struct.dataclass
class AtLayer:
    """``edit`` applied at the one layer whose index equals ``layer``, which may be traced.

    Keyed by a layer wildcard, ``{"vision.layers.*.resid_pre": AtLayer(L, Replace(r))}``: a sweep
    over layers passes ``L`` as an array, so one compiled program serves every layer (DESIGN.md §3).
    """

    layer: Array
    edit: Any


def as_tuple(edit) -> tuple:
    return tuple(edit) if isinstance(edit, (tuple, list)) else (edit,)


def apply_edits(edit, x, site: str):
    """Applies one edit or a sequence of edits, in order, to the activation ``x`` at ``site``."""
    for e in as_tuple(edit):
        x = e(x, site)
    return x


def check_values(edit, site: str) -> None:
    """Refuses NaN in a concrete edit, and infinities except ``-inf`` in ``AttnBias.mask`` (which
    removes a key). Traced values (inside ``jit``/``vmap``/``grad``) cannot be read and pass."""
    for field in dataclasses.fields(edit):
        value = getattr(edit, field.name)
        for leaf in jax.tree.leaves(value):
            if isinstance(leaf, jax.core.Tracer):
                continue
            a = np.asarray(leaf)
            if not np.issubdtype(a.dtype, np.floating):
                continue
            allowed = -np.inf if isinstance(edit, AttnBias) and field.name == "mask" else None
            bad = np.isnan(a) | (np.isinf(a) & (a != allowed))
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"{type(edit).__name__}.{field.name} at site {site!r} holds a non-finite value "
                    f"({a[where] if a.ndim else a}) at index {where} of shape {a.shape}; an edit "
                    "must be finite" + (" (only -inf, which removes a key, is allowed here)"
                                        if allowed is not None else "")
                )


def axis_mask(axis: str, size: int, index: int | Sequence[int]) -> Along:
    """``where`` selecting positions ``index`` of the named site axis ``axis`` (size ``size``)."""
    m = np.zeros((size,), dtype=bool)
    idx = np.atleast_1d(np.asarray(index))
    if idx.size and (idx.min() < -size or idx.max() >= size):
        raise ValueError(f"{axis} index {idx.tolist()} out of range for {size} {axis} positions")
    m[idx] = True
    return Along(m, (axis,))


def token_mask(num_tokens: int, tokens: int | Sequence[int]) -> Along:
    """``where`` selecting tokens of a ``[batch, token, ...]`` activation (any site with a token
    axis: residuals, ``attn.q/k/v/z``)."""
    return axis_mask("token", num_tokens, tokens)


def head_mask(num_heads: int, heads: int | Sequence[int]) -> Along:
    """``where`` selecting heads of an activation with a head axis (``attn.q/k/v/z``, ``attn.logits``,
    ``attn.pattern``)."""
    return axis_mask("head", num_heads, heads)
