"""Carrying a concept from modality i into modality j through an alignment map, and using it there.

A direction found in modality i (eq 6, ``S+`` and ``S-`` read at site i) has no meaning in
modality j's space. Through ``phi_{i->j}`` it does: ``carry_direction`` maps both example sets
and takes eq 6's mean difference of the images, which for a linear map is ``W Delta_i`` and for
eq 4's nonlinear map is its natural generalisation (the map of a difference is not the
difference of maps). The carried direction is then used in j to read (held-out AUROC of the
projection) and to steer (``Add`` at j's site, eq 5; ``steered_predictions``).

``transfer_scores`` is the whole measurement between two ``Space``s, which may be two modalities
of one model (Table 2's transfer table) or two models (across architectures: two CLIPs of other
widths and depths, a CLIP and a captioner): row n of every space's reads is the same sample.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.align.mapped import FittedMap
from mrepe_jax.edits import Add
from mrepe_jax.models.layers import normalize
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.reading.prototypes import auroc


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
def _steered(model, variables, tower, pooled, deltas, alpha, prompts, valid):
    def one(delta):
        emb, _ = model.apply(variables, tower, pooled, edits={f"{tower}.pooled": Add(delta, alpha)},
                             method="from_pooled")
        # Padded prompt rows (``valid`` False) are never the answer.
        return jnp.argmax(jnp.where(valid, normalize(emb) @ prompts.T, -jnp.inf), axis=-1)

    return jax.lax.map(one, deltas)


def _bucket(n: int) -> int:
    """The padded size of an axis of ``n``: the next power of two (at least 8), so that families
    with 3, 4 or 6 values, and direction sets of 48 or 60, share one compiled program."""
    return max(8, 1 << (n - 1).bit_length())


def steered_predictions(model, variables, tower: str, pooled, deltas, alpha, prompts) -> np.ndarray:
    """Eq 5 at ``{tower}.pooled``: for each direction in ``deltas`` [K, D], the zero-shot
    prediction (argmax over ``prompts`` [V, P], unit-norm class-prompt embeddings) of every row
    of ``pooled`` [N, D] after ``Add(delta, alpha)`` at that site: ``[K, N]`` value indices. One
    compiled program serves every direction set and every family of a tower: ``lax.map`` over
    ``deltas``, with K and V padded to ``_bucket`` sizes (padded prompts are masked out, padded
    directions dropped)."""
    deltas = np.asarray(deltas, np.float32)
    if deltas.ndim != 2 or deltas.shape[1] != np.shape(pooled)[-1]:
        raise ValueError(f"steering directions must be [K, {np.shape(pooled)[-1]}] for "
                         f"{tower}.pooled, got {deltas.shape}")
    prompts = np.asarray(prompts, np.float32)
    k = deltas.shape[0]
    # Padded on the host (no program per shape); padded directions repeat row 0 and are dropped.
    deltas, _ = parallel.pad_batch(deltas, _bucket(k))
    prompts, valid = parallel.pad_batch(prompts, _bucket(len(prompts)))
    preds = _steered(model, variables, tower, jnp.asarray(pooled, jnp.float32), deltas,
                     jnp.float32(alpha), prompts, valid)
    return np.asarray(preds[:k])


@dataclasses.dataclass(frozen=True)
class Space:
    """A representation space on paired data: ``train`` [N, d] and ``test`` [M, d] read at
    ``site`` of model ``name`` (row n is the same sample in every space of a study), and the
    model's steering probe. ``steer(family, deltas [K, d], alpha)`` returns ``[K, num_steer]``:
    the value of ``family`` the model outputs (a zero-shot prediction, a caption's word; -1 for
    none) for each of the first ``num_steer`` test samples after ``Add(delta, alpha)`` at
    ``site``. ``alpha`` comes in absolute units (the caller scales by ``scale``)."""

    name: str
    site: str
    train: np.ndarray
    test: np.ndarray
    steer: Callable[[str, np.ndarray, float], np.ndarray]

    @property
    def dim(self) -> int:
        return int(np.shape(self.train)[-1])

    @property
    def scale(self) -> float:
        """The unit of steering alphas: the site's mean test norm."""
        return float(np.linalg.norm(self.test, axis=-1).mean())


def _one_vs_rest(x, y, c):
    return x[y == c], x[y != c]


def transfer_scores(source: Space, target: Space, maps: Mapping[str, Sequence[FittedMap]],
                    families: Mapping[str, Sequence[str]], labels: Mapping[str, Mapping],
                    seeds: Sequence[int], alphas: Sequence[float], num_steer: int) -> dict:
    """Concepts carried from ``source`` to ``target``, scored in the target.

    For every value c of every family (one vs rest), a direction in the target's space from each
    method: ``native`` (eq 6 on the target's own train reads: the ceiling), ``no map`` (the
    source's eq 6 direction used as it is; only when the widths agree), ``random`` (one per
    seed: the floor) and each map kind in ``maps`` (one fitted map per seed, ``carry_direction``).
    Each is used to read (held-out AUROC of the target's test reads projected on it) and to steer
    (``target.steer`` at each alpha, in units of ``target.scale``: success = the share of steered
    samples whose true value is not c that the model now says is c, Table 3's rule).

    ``labels``: ``{"train": {family: [N]}, "test": {family: [M]}}``. Returns ``{method: {"auroc":
    [per variant], "success": {alpha: [per variant]}}}``, means over every value of every family.
    """
    if len(source.train) != len(target.train) or len(source.test) != len(target.test):
        raise ValueError(f"transfer from {source.name} to {target.name} needs paired reads: train "
                         f"{len(source.train)} vs {len(target.train)}, test {len(source.test)} vs "
                         f"{len(target.test)} rows")
    methods = {"native": [None], **({"no map": ["identity"]} if source.dim == target.dim else {}),
               "random": list(seeds), **{kind: list(ms) for kind, ms in maps.items()}}
    # Each map's image of the source's train set, once: carrying a direction is then a masked
    # mean per value (``carry_direction``'s eq 6 of the mapped sets).
    mapped = {(m, v): np.asarray(phi(source.train, site=source.site)) for m, variants in maps.items()
              for v, phi in enumerate(variants)}
    scores = {m: {"auroc": np.zeros(len(v)), "success": np.zeros((len(alphas), len(v)))}
              for m, v in methods.items()}
    # Every family's directions are padded (zeros) to one count, so a steering probe compiled
    # for one family's stack serves them all.
    stack = max(len(v) for v in families.values()) * sum(len(v) for v in methods.values())
    cells = 0
    for f, (family, values) in enumerate(families.items()):
        y_tr, y_te = np.asarray(labels["train"][family]), np.asarray(labels["test"][family])
        deltas, index = [], []
        for c in range(len(values)):
            for method, variants in methods.items():
                for v, variant in enumerate(variants):
                    if method == "native":
                        d = direction_mean_diff(*_one_vs_rest(target.train, y_tr, c))
                    elif method == "random":
                        d = random_direction(target.dim, (variant, f, c))
                    else:
                        reads = source.train if method == "no map" else mapped[(method, v)]
                        d = carry_direction(None, *_one_vs_rest(reads, y_tr, c))
                    d = np.asarray(d, np.float32)
                    scores[method]["auroc"][v] += float(auroc(*_one_vs_rest(target.test @ d, y_te, c)))
                    deltas.append(d)
                    index.append((c, method, v))
        y_steer = y_te[:num_steer]
        for a, alpha in enumerate(alphas):
            padded = np.zeros((stack, target.dim), np.float32)
            padded[:len(deltas)] = deltas
            said = np.asarray(target.steer(family, padded, alpha * target.scale))
            if said.shape != (stack, len(y_steer)):
                raise ValueError(f"{target.name}'s steering probe returned shape {said.shape}, "
                                 f"expected {(stack, len(y_steer))} (directions, samples)")
            for (c, method, v), p in zip(index, said):
                scores[method]["success"][a, v] += float(np.mean(p[y_steer != c] == c))
        cells += len(values)
    return {m: {"auroc": (sc["auroc"] / cells).tolist(),
                "success": {str(a): (x / cells).tolist() for a, x in zip(alphas, sc["success"])}}
            for m, sc in scores.items()}
