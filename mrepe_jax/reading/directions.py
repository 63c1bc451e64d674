"""Concept directions from contrast sets (eq 6) and the two standard alternatives (DESIGN.md §4).

- ``direction_mean_diff``: eq 6, ``Delta_c = mean(S+_c) - mean(S-_c)``, the vector eq 5 adds.
- ``direction_pca``: the RepE reading vector, the first principal component of paired differences.
- ``direction_probe``: the weight vector of an L2-regularised logistic probe.

All take activations ``[N, D]`` (one row per example, e.g. from ``collect_activations``) and return
a unit-norm ``[D]`` direction oriented so that positives project higher than negatives
(``calibrate_sign``). ``direction_mean_diff(..., normalize=False)`` returns eq 6's raw vector, whose
norm is the scale ``alpha`` in eq 5 is relative to.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mrepe_jax.reading.activations import Moments
from mrepe_jax.reading.prototypes import array_module

Array = Any


def _as_set(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] array of activations, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} set is empty (shape {x.shape}); a direction needs examples on both sides")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {bad[0]}, feature {bad[1]})")
    return x


def _check_pair(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = _as_set(pos, "positive"), _as_set(neg, "negative")
    if pos.shape[1] != neg.shape[1]:
        raise ValueError(
            f"feature dims differ: positive set has shape {pos.shape}, negative set {neg.shape}"
        )
    return pos, neg


def unit(v: Array) -> Array:
    """``v / |v|`` in float32; a zero vector is an error rather than a NaN direction. Host arrays
    stay numpy (``prototypes.array_module``)."""
    xp = array_module(v)
    v = xp.asarray(v, xp.float32)
    norm = xp.linalg.norm(v)
    if not np.isfinite(float(norm)) or float(norm) == 0.0:
        raise ValueError(f"cannot normalise a direction of norm {float(norm)}")
    return v / norm


def calibrate_sign(direction: Array, pos: Array, neg: Array) -> Array:
    """Flips ``direction`` if needed so that ``mean(pos @ d) >= mean(neg @ d)``."""
    pos, neg = _check_pair(pos, neg)
    xp = array_module(direction)
    d = xp.asarray(direction)
    if d.shape != (pos.shape[1],):
        raise ValueError(f"direction of shape {d.shape} does not match activations of shape {pos.shape}")
    gap = xp.mean(pos @ d) - xp.mean(neg @ d)
    return xp.where(gap < 0, -d, d)


def direction_mean_diff(pos: Array, neg: Array, normalize: bool = True) -> Array:
    """Eq 6: ``Delta_c = 1/|S+| sum_{r in S+} r - 1/|S-| sum_{r in S-} r``.

    Unit-norm by default; ``normalize=False`` keeps eq 6's magnitude (the natural unit for eq 5's
    ``alpha``). The sign needs no calibration: positives project higher by construction.
    """
    pos, neg = _check_pair(pos, neg)
    # Means in float64 on the host: exact enough that a planted direction is recovered to ~1e-7.
    delta = (pos.mean(0, dtype=np.float64) - neg.mean(0, dtype=np.float64)).astype(np.float32)
    return unit(delta) if normalize else delta


def mean_diff_from_moments(moments: Moments, pos_groups, neg_groups, normalize: bool = True) -> Array:
    """Eq 6 from streamed statistics (``stream_statistics``): groups ``pos_groups`` form S+,
    ``neg_groups`` S- (each an int or a sequence of group indices, pooled by example count)."""
    pos_groups, neg_groups = np.atleast_1d(pos_groups), np.atleast_1d(neg_groups)
    pos, neg = moments.pooled(pos_groups), moments.pooled(neg_groups)
    for name, m, g in (("positive", pos, pos_groups), ("negative", neg, neg_groups)):
        if int(m.count[0]) == 0:
            raise ValueError(f"{name} set is empty: groups {g.tolist()} have no examples")
    delta = pos.mean[0] - neg.mean[0]
    return unit(delta) if normalize else delta


def direction_pca(pos: Array, neg: Array) -> Array:
    """RepE's reading vector: first principal component of the pair differences ``pos_i - neg_i``.

    ``pos[i]`` and ``neg[i]`` must be a contrast pair (same stimulus, concept present / absent).
    RepE shuffles the order inside each pair before its PCA, which makes the differences zero-mean
    with all the concept's variance along ``±Delta``; that is the uncentred second moment of the
    differences, so we take the top right singular vector of the *uncentred* difference matrix
    (centring the unshuffled differences would subtract the very shift we are after).
    """
    pos, neg = _check_pair(pos, neg)
    if pos.shape[0] != neg.shape[0]:
        raise ValueError(
            f"direction_pca needs contrast pairs: positive set has shape {pos.shape}, negative set "
            f"{neg.shape} (different numbers of rows)"
        )
    diffs = jnp.asarray(pos - neg, jnp.float32)
    _, _, vt = jnp.linalg.svd(diffs, full_matrices=False)
    return calibrate_sign(unit(vt[0]), pos, neg)


def direction_probe(
    x: Array,
    y: Array,
    steps: int = 500,
    lr: float = 0.05,
    l2: float = 1e-3,
) -> Array:
    """Weight vector of a logistic probe ``p(y=1|x) = sigmoid(w . x + b)``, unit-norm.

    Trained full-batch with ``optax.adam`` for ``steps`` steps on the mean cross-entropy plus
    ``l2 * |w|^2``. Inputs are centred and divided by one global scale (not per feature: a
    per-feature scaling would change which direction ``w`` is the normal of). ``y`` is 0/1 or bool.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"probe inputs must be a [N, D] array of activations, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels of shape {y.shape} do not match activations of shape {x.shape}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"probe labels must be 0/1 or bool, got values {np.unique(y)[:10].tolist()}")
    y = y.astype(bool)
    pos, neg = _check_pair(x[y], x[~y])
    x = np.concatenate([pos, neg]).astype(np.float32)
    t = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    xs = (x - x.mean(0)) / max(float(x.std()), 1e-12)
    w = _fit_logistic(jnp.asarray(xs), jnp.asarray(t), steps, lr, l2)
    return calibrate_sign(unit(w), pos, neg)


def _fit_logistic(x, t, steps: int, lr: float, l2: float):
    opt = optax.adam(lr)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, t)) + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def run(p):
        def body(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), None

        (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=steps)
        return p

    # Zero init: the logistic loss is convex, so the start only matters for speed.
    p = run({"w": jnp.zeros(x.shape[1], x.dtype), "b": jnp.zeros((), x.dtype)})
    return p["w"]
