"""Carrying a concept from modality i into modality j through an alignment map, and using it there.

A direction found in modality i (eq 6, ``S+`` and ``S-`` read at site i) has no meaning in
modality j's space. Through ``phi_{i->j}`` it does: ``carry_direction`` maps both example sets
and takes eq 6's mean difference of the images, which for a linear map is ``W Delta_i`` and for
eq 4's nonlinear map is its natural generalisation (the map of a difference is not the
difference of maps). The carried direction is then used in j to read (held-out AUROC of the
projection) and to steer (``Add`` at j's site, eq 5; ``steered_predictions``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.align.mapped import FittedMap
from mrepe_jax.edits import Add
from mrepe_jax.models.clip import normalize
from mrepe_jax.reading.directions import direction_mean_diff


def carry_direction(phi: FittedMap | None, pos, neg, site: str | None = None) -> np.ndarray:
    """Eq 6 carried through ``phi``: ``unit(mean phi(S+) - mean phi(S-))`` in ``phi``'s target
    space, from source-modality examples ``pos``/``neg`` [n, d_i] read at ``site``. With
    ``phi=None`` the direction stays in the source space (the "no map" carry)."""
    if phi is not None:  # one call for both sets: one compiled shape, not two
        both = np.asarray(phi(np.concatenate([pos, neg]), site=site))
        pos, neg = both[:len(pos)], both[len(pos):]
    return np.asarray(direction_mean_diff(pos, neg))


def random_direction(dim: int, seed) -> np.ndarray:
    """A uniformly random unit direction (``seed``: an int or a tuple of ints): the floor of a
    transfer table."""
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _steered(model, variables, tower, pooled, deltas, alpha, prompts):
    def one(delta):
        emb, _ = model.apply(variables, tower, pooled, edits={f"{tower}.pooled": Add(delta, alpha)},
                             method="from_pooled")
        return jnp.argmax(normalize(emb) @ prompts.T, axis=-1)

    return jax.lax.map(one, deltas)


def steered_predictions(model, variables, tower: str, pooled, deltas, alpha, prompts) -> np.ndarray:
    """Eq 5 at ``{tower}.pooled``: for each direction in ``deltas`` [K, D], the zero-shot
    prediction (argmax over ``prompts`` [V, P], unit-norm class-prompt embeddings) of every row
    of ``pooled`` [N, D] after ``Add(delta, alpha)`` at that site: ``[K, N]`` value indices. One
    compiled program serves every direction of a tower (``lax.map`` over ``deltas``)."""
    deltas = jnp.asarray(deltas, jnp.float32)
    if deltas.ndim != 2 or deltas.shape[1] != np.shape(pooled)[-1]:
        raise ValueError(f"steering directions must be [K, {np.shape(pooled)[-1]}] for "
                         f"{tower}.pooled, got {deltas.shape}")
    return np.asarray(_steered(model, variables, tower, jnp.asarray(pooled, jnp.float32), deltas,
                               jnp.float32(alpha), jnp.asarray(prompts, jnp.float32)))
