"""Prototype membership (eq 1) and the identification score reported in Table 1.

Eq 1 defines the concept representation as ``R_c = {r : sim(r, prototype_c) > tau_c}``. Here:

- ``prototype(reps)``: the normalised mean of the L2-normalised concept examples;
- ``similarity(r, p)``: cosine similarity;
- ``concept_members(r, p, tau)``: the boolean mask of eq 1;
- ``fit_threshold(sim_pos, sim_neg)``: ``tau_c``, chosen on a training split to maximise balanced
  accuracy (default) or F1;
- ``auroc``: exact rank-based AUROC (Mann-Whitney U, ties count one half), jittable and vmappable so
  bootstrap CIs are a ``jax.vmap`` over resampled index arrays (DESIGN.md §4);
- ``identification_score``: the Table 1 number, defined in its docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

CRITERIA = ("balanced_accuracy", "f1")


def array_module(*xs):
    """``numpy`` when every input is a host array or scalar, else ``jax.numpy``.

    These functions run under ``jit``/``vmap`` (bootstrap CIs) and, far more often, on host arrays
    of many shapes in the identification stage: there each eager ``jnp`` call would compile an XLA
    program per new shape (hundreds per run), while numpy computes the same numbers directly.
    """
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def _l2(x):
    xp = array_module(x)
    x = xp.asarray(x, xp.float32)
    # The floor only touches all-zero rows (which would be NaN), as ``models.layers.normalize``.
    return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prototype(reps: Array) -> Array:
    """``prototype_c`` of eq 1: the mean of the L2-normalised rows of ``reps [N, D]``, renormalised.

    Rows are normalised first (as in CLIP prompt ensembling) because eq 1 compares by cosine: an
    example with a large norm should not dominate the prototype's direction.
    """
    reps = np.asarray(reps)
    if reps.ndim != 2 or reps.shape[0] == 0:
        raise ValueError(f"prototype needs a non-empty [N, D] array, got shape {reps.shape}")
    if not np.all(np.isfinite(reps)):
        raise ValueError("prototype inputs contain NaN or inf")
    return _l2(_l2(reps).mean(axis=0))


def similarity(r: Array, proto: Array) -> Array:
    """Cosine similarity ``sim(r, prototype)``: ``r [..., D]`` against ``proto [D]`` gives ``[...]``;
    against a stack of prototypes ``[K, D]`` it gives ``[..., K]``."""
    xp = array_module(r, proto)
    r, proto = xp.asarray(r), xp.asarray(proto)
    if r.shape[-1] != proto.shape[-1]:
        raise ValueError(f"feature dims differ: reps have shape {r.shape}, prototype {proto.shape}")
    return _l2(r) @ _l2(proto).T


def concept_members(r: Array, proto: Array, tau: Array) -> Array:
    """Eq 1: the mask of ``r`` in ``R_c = {r : sim(r, prototype_c) > tau_c}`` (strict)."""
    return similarity(r, proto) > tau


def _rates(sim_pos: np.ndarray, sim_neg: np.ndarray, taus: np.ndarray):
    """True/false positive counts of ``sim > tau`` for every ``tau``, by binary search."""
    tp = len(sim_pos) - np.searchsorted(np.sort(sim_pos), taus, side="right")
    fp = len(sim_neg) - np.searchsorted(np.sort(sim_neg), taus, side="right")
    return tp, fp


def _score(tp, fp, n_pos, n_neg, criterion):
    if criterion == "balanced_accuracy":
        return 0.5 * (tp / n_pos + (n_neg - fp) / n_neg)
    fn = n_pos - tp
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def fit_threshold(sim_pos: Array, sim_neg: Array, criterion: str = "balanced_accuracy") -> np.floating:
    """``tau_c`` of eq 1, maximising ``criterion`` of ``sim > tau`` on the given (training) scores.

    ``"balanced_accuracy"`` (default) is the mean of the true-positive and true-negative rates; it is
    the default because one-vs-rest splits are imbalanced ((K-1) negatives per positive), where plain
    accuracy rewards "never a member". ``"f1"`` is the alternative. Candidates sit in each gap between
    consecutive distinct scores (at its midpoint where the scores' dtype can hold one) plus one below
    the minimum; ties between candidates go to the smallest ``tau``.

    ``tau`` is returned in the scores' dtype (a numpy scalar, float32 for float32 scores): every
    candidate lies strictly inside its gap *in that dtype*, so ``sim > tau`` selects on the scores
    exactly the members it was fitted to select. A float64 midpoint would round onto a float32
    score, dropping an example or merging two adjacent scores.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    sim_pos, sim_neg = _check_scores(sim_pos, sim_neg)
    dtype = np.result_type(sim_pos.dtype, sim_neg.dtype)
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)
    sim_pos, sim_neg = sim_pos.astype(dtype), sim_neg.astype(dtype)
    u = np.unique(np.concatenate([sim_pos, sim_neg]))
    # Midpoints computed wide, rounded to the scores' dtype, then clamped into [u_k, u_k+1): when no
    # value lies strictly between two adjacent scores, u_k itself still separates them under ">".
    mid = ((u[:-1].astype(np.float64) + u[1:].astype(np.float64)) / 2).astype(dtype)
    mid = np.where((mid >= u[:-1]) & (mid < u[1:]), mid, u[:-1])
    taus = np.concatenate([[np.nextafter(u[0], dtype.type(-np.inf))], mid, [u[-1]]]).astype(dtype)
    tp, fp = _rates(sim_pos, sim_neg, taus)
    return taus[np.argmax(_score(tp, fp, len(sim_pos), len(sim_neg), criterion))]


def _check_scores(scores_pos, scores_neg):
    pos, neg = np.ravel(np.asarray(scores_pos)), np.ravel(np.asarray(scores_neg))
    for name, s in (("positive", pos), ("negative", neg)):
        if s.size == 0:
            raise ValueError(f"{name} scores are empty")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name} scores contain NaN or inf")
    return pos, neg


def auroc(scores_pos: Array, scores_neg: Array) -> Array:
    """Exact AUROC = ``P(s+ > s-) + 0.5 P(s+ == s-)`` over all pairs (the Mann-Whitney U statistic
    divided by ``n+ n-``, i.e. the rank formula with mid-ranks for ties).

    Static shapes, so it jits and vmaps (bootstrap); on host arrays it runs in numpy. Each positive's count of smaller
    and equal negatives comes from two binary searches: O((n+ + n-) log n-) and exact integers.
    """
    xp = array_module(scores_pos, scores_neg)
    pos, neg = xp.ravel(xp.asarray(scores_pos)), xp.ravel(xp.asarray(scores_neg))
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"auroc needs both sets: {pos.size} positive and {neg.size} negative scores")
    s = xp.sort(neg)
    below = xp.searchsorted(s, pos, side="left")
    equal = xp.searchsorted(s, pos, side="right") - below
    # Per-positive fractions in [0, 1] before averaging: summing raw ranks in float32 loses integers
    # beyond 2^24.
    return xp.mean((below + 0.5 * equal) / neg.size)


@dataclasses.dataclass(frozen=True)
class IdentificationResult:
    score: float  # mean held-out one-vs-rest AUROC over the family's values: the Table 1 number
    f1: float  # mean held-out F1 of eq 1 membership at the fitted taus
    auroc_per_value: np.ndarray  # [K]
    f1_per_value: np.ndarray  # [K]
    tau: np.ndarray  # [K], fitted on the training split
    prototypes: np.ndarray  # [K, D], from the training split


def identification_score(
    train_reps: Array,
    train_labels: Array,
    test_reps: Array,
    test_labels: Array,
    num_values: int | None = None,
    criterion: str = "balanced_accuracy",
) -> IdentificationResult:
    """The representation identification score of Table 1, for one concept family at one site.

    Definition. A concept family (e.g. colour) has values ``c = 0..K-1``; each example has one value.
    For each value ``c``:

    1. ``prototype_c = prototype(train_reps[train_labels == c])`` (eq 1's prototype);
    2. ``tau_c = fit_threshold(sim(train, prototype_c)[is c], ...[is not c], criterion)`` on the
       training split (balanced accuracy by default);
    3. on the held-out split, ``AUROC_c`` of ``sim(test, prototype_c)`` for "is c" vs "is not c"
       (one-vs-rest), and ``F1_c`` of the membership ``sim > tau_c`` (eq 1) against "is c".

    ``score`` is the macro average ``mean_c AUROC_c`` — threshold-free, 0.5 for chance, 1 when every
    held-out example of ``c`` is closer to ``prototype_c`` than every other example — and is the
    number reported in Table 1. ``f1 = mean_c F1_c`` is reported beside it: it also checks that the
    single threshold eq 1 commits to transfers to new data.
    """
    train_reps, test_reps = np.asarray(train_reps), np.asarray(test_reps)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    for name, r, lab in (("train", train_reps, train_labels), ("test", test_reps, test_labels)):
        if r.ndim != 2 or lab.shape != (r.shape[0],):
            raise ValueError(
                f"{name} reps must be [N, D] with labels [N]; got shapes {r.shape} and {lab.shape}"
            )
    if train_reps.shape[1] != test_reps.shape[1]:
        raise ValueError(f"feature dims differ: train reps {train_reps.shape}, test reps {test_reps.shape}")
    k = int(num_values if num_values is not None else max(train_labels.max(), test_labels.max()) + 1)
    if k < 2:
        raise ValueError(f"a concept family needs at least 2 values for one-vs-rest, got {k}")

    protos, taus, aurocs, f1s = [], [], [], []
    for c in range(k):
        for name, lab in (("train", train_labels), ("test", test_labels)):
            n = int(np.sum(lab == c))
            if n == 0 or n == len(lab):
                side = "no" if n == 0 else "only"
                raise ValueError(f"concept value {c} has {side} examples in the {name} split")
        p = prototype(train_reps[train_labels == c])
        s_train = np.asarray(similarity(train_reps, p))
        tau = fit_threshold(s_train[train_labels == c], s_train[train_labels != c], criterion)
        s_test = np.asarray(similarity(test_reps, p))
        is_c = test_labels == c
        pred = s_test > tau
        tp, fp, fn = np.sum(pred & is_c), np.sum(pred & ~is_c), np.sum(~pred & is_c)
        protos.append(np.asarray(p))
        taus.append(tau)
        aurocs.append(float(auroc(s_test[is_c], s_test[~is_c])))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    aurocs, f1s = np.asarray(aurocs), np.asarray(f1s, dtype=np.float64)
    return IdentificationResult(
        score=float(aurocs.mean()),
        f1=float(f1s.mean()),
        auroc_per_value=aurocs,
        f1_per_value=f1s,
        tau=np.asarray(taus),
        prototypes=np.stack(protos),
    )
