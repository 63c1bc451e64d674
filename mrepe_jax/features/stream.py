"""Activations streamed from a model into SAE training, batch by batch, never written anywhere.

``site_batches`` turns a model, its params and a deterministic source of inputs into the
``batches(step)`` that ``features.train.train_saes`` reads: each step runs one captured forward
(one compiled program for every step) and samples token rows of each site. Because the inputs
and the sampled rows are functions of the step alone, a resumed run sees the batches an
uninterrupted one would (``train/loop.fit``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mrepe_jax.reading.activations import tower_apply


@functools.partial(jax.jit, static_argnames=("apply_fn", "sites"))
def _site_acts(params, batch, *, apply_fn, sites):
    # Module level, keyed on a frozen apply function (``reading.activations.TowerApply``) and the
    # sites: one program for every step, and for every later run with an equal model.
    return apply_fn({"params": params}, batch, sites)[1]


@dataclasses.dataclass(frozen=True)
class CallApply:
    """``apply_fn`` of a model called on batch entries in order, e.g. BLIP-2 with ``keys=
    ("pixel_values", "input_ids", "attention_mask")``, whose captures reach the Q-Former and OPT
    sites. Frozen: equal instances share one compiled program."""

    model: Any
    keys: tuple[str, ...]

    def __call__(self, params, batch, capture):
        return self.model.apply(params, *(batch[k] for k in self.keys), capture=capture)


def site_batches(model, params, tower: str, inputs: Callable[[int], Mapping[str, np.ndarray]],
                 sites: Sequence[str], batch_size: int, *, input_key: str, mask_key: str | None = None,
                 seed: int = 0) -> Callable[[int], np.ndarray]:
    """``stream_batches`` for one tower of a CLIP-like model (``model.apply(..., tower,
    batch[input_key], batch[mask_key], method="encode")``)."""
    return stream_batches(tower_apply(model, tower, input_key, mask_key), params, inputs, sites, batch_size,
                          mask_key=mask_key, seed=seed)


def stream_batches(apply_fn, params, inputs: Callable[[int], Mapping[str, np.ndarray]], sites: Sequence[str],
                   batch_size: int, *, mask_key: str | None = None, seed: int = 0) -> Callable[[int], np.ndarray]:
    """``batches(step) -> [batch_size, len(sites), d]``: the activations of ``inputs(step)`` (a batch
    dict) at each site, one row per token, through ``apply_fn(variables, batch, capture) ->
    (outputs, acts)`` (a frozen, hashable one: ``reading.activations.TowerApply``, ``CallApply``).
    Member ``i`` reads ``sites[i]`` (sites of one width). Each step draws ``batch_size`` of the
    step's real tokens, the same ones for every site, from a generator seeded by ``(seed, step)``;
    ``batch[mask_key]`` marks the real ones where it has a site's ``[B, T]`` shape (a text
    tower's padding; BLIP-2's OPT sequence), else every token is real (the Q-Former's queries).
    A step whose inputs hold fewer real tokens than ``batch_size`` is an error naming both."""
    sites = tuple(sites)

    def batches(step: int) -> np.ndarray:
        batch = dict(inputs(step))
        acts = _site_acts(params, batch, apply_fn=apply_fn, sites=sites)
        rows = [np.asarray(acts[s]) for s in sites]
        widths = {r.shape[-1] for r in rows}
        if len(widths) != 1:
            raise ValueError(f"sites {list(sites)} differ in width {[r.shape[-1] for r in rows]}: one SAE "
                             "stack reads sites of one width")
        shape = rows[0].shape
        mask = None if mask_key is None else np.asarray(batch[mask_key], bool)
        real = mask if mask is not None and mask.shape == shape[:-1] else np.ones(shape[:-1], bool)
        flat = np.flatnonzero(real.reshape(-1))
        if len(flat) < batch_size:
            raise ValueError(f"step {step}'s inputs hold {len(flat)} real tokens at {sites[0]}, fewer than "
                             f"one SAE batch of {batch_size}: give more inputs per step")
        pick = np.sort(np.random.default_rng([seed, step]).choice(flat, batch_size, replace=False))
        return np.stack([r.reshape(-1, r.shape[-1])[pick] for r in rows], axis=1)

    return batches
