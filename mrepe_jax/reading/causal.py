"""Causal effects of representations on outputs (eq 2 of the paper):

    CE(r, y) = E[y | do(r = r')] - E[y | do(r = r0)]

``r`` is the activation at one named site (``{tower}.layers.{L}.{point}``) and one token position
(and, for per-head sites, one head); ``r0`` is its value in the run being patched (the *base* run)
and ``r'`` its value in the other run of a clean/corrupt pair (the *source* run). ``y`` is a
scalar ``metric`` of the tower's projected embedding, and ``E`` is the mean over the batch.

Two estimators with the same signature and the same output:

* ``causal_effect``: exact activation patching. One ``jax.vmap``-ed call per layer ``L`` (of one
  compiled program, see below) runs every (position[, head]) patch of that layer at once, starting
  from the base run's cached residual stream entering ``L`` (``run_layers`` staging), so the
  prefix ``0..L-1`` is never recomputed.
* ``attribution_effect``: attribution patching, the first-order Taylor estimate
  ``(r' - r0) . dy/dr`` at every site at once, from one forward and one backward pass (plus the
  source run's forward, which exact patching needs as well).

Directions (the ``direction`` argument):

* ``"noising"`` (default): base = clean, source = corrupt. Patching the corrupt value into the
  clean run measures how much the clean behaviour *depends* on ``r`` (necessity).
* ``"denoising"``: base = corrupt, source = clean. Patching the clean value into the corrupt run
  measures how much ``r`` alone *restores* the clean behaviour (sufficiency).

In both, the effect is ``metric(patched base run) - metric(base run)``.

The ``metric`` contract: ``metric(embeddings) -> per-example scalars``, where ``embeddings`` is
the ``[batch, d]`` projected (unnormalised) embedding the tower's ``readout`` returns, and the
result has shape ``[batch]``. Example, a zero-shot logit difference between two prompts::

    def _logit_diff(diff, e):                      # in a module, not a notebook cell
        return jnp.sum(normalize(e) * diff, axis=-1)

    metric = jax.tree_util.Partial(_logit_diff, text_a - text_b)   # = logit_diff(text_a, text_b)

It must be a pure jax function. Metrics that carry arrays should carry them as pytree leaves, a
``jax.tree_util.Partial`` of a function defined in a module (as above), or a ``flax.struct``
dataclass with ``__call__``: the arrays are then arguments of the compiled programs, and calls
that differ only in them (one metric per concept family, a rerun notebook cell) reuse them. A
plain function, a lambda or a ``Partial`` of a function defined in a notebook cell is keyed by its
identity: each new one compiles the forward and the sweep programs again, and JAX's cache keeps
each, with its model, until ``mrepe_jax.clear_caches()``. Examples of a batch must not interact
(no batch statistics), which holds for every tower here: attribution patching relies on it to
read per-example gradients off one backward pass.

The compiled, sharded programs that run both live in ``causal_programs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import parallel
from mrepe_jax import sites as sites_lib
from mrepe_jax.layouts import site_axes
from mrepe_jax.models.layers import normalize
from mrepe_jax.reading import causal_programs as programs

Array = Any
Metric = Callable[[Array], Array]

DIRECTIONS = ("noising", "denoising")
POINTS = sites_lib.LAYER_POINTS + sites_lib.XATTN_POINTS


@dataclasses.dataclass(frozen=True)
class CausalEffects:
    """Eq 2 for every swept (layer, position[, head]).

    ``per_example[b, l, p(, h)]`` is ``metric(base run b with site (layers[l], positions[p](,
    h)) patched) - metric(base run b)``; ``effects`` is its batch mean, the ``E`` of eq 2.
    ``base`` is the metric of the unpatched base run and ``target`` that of the source run (the
    value a patch moves towards), both ``[batch]``. ``sites[l]`` names the site of ``layers[l]``.
    """

    effects: Array
    per_example: Array
    base: Array
    target: Array
    sites: tuple[str, ...]
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    direction: str
    method: str

    @property
    def clean(self) -> Array:
        """Metric of the clean run, ``[batch]``."""
        return self.base if self.direction == "noising" else self.target

    @property
    def corrupt(self) -> Array:
        """Metric of the corrupt run, ``[batch]``."""
        return self.target if self.direction == "noising" else self.base

    @property
    def total_effect(self) -> Array:
        """``E[target - base]``: the effect of swapping the whole input."""
        return jnp.mean(self.target - self.base)

    def normalized(self) -> Array:
        """``effects / total_effect``: 1 means the site alone carries the whole input swap."""
        return self.effects / self.total_effect


# ----------------------------------------------------------------------------------------------
# Validation


@dataclasses.dataclass(frozen=True)
class _Plan:
    tower: str
    point: str
    axes: tuple[str, ...]  # the site's named axes (``layouts.site_axes``)
    heads: bool
    layers: tuple[int, ...]
    sites: tuple[str, ...]
    num_layers: int
    direction: str


def _tower_layers(model, tower: str) -> int:
    layers = model.tower_layers()
    if tower not in layers:
        raise ValueError(f"unknown tower {tower!r}; this model has towers {sorted(layers)}")
    return layers[tower]


def _plan(model, tower, point, heads, layers, direction, clean_inputs, corrupt_inputs) -> _Plan:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    num_layers = _tower_layers(model, tower)
    if point not in POINTS:
        close = sites_lib.near_matches(point, POINTS)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown point {point!r}{hint} (points are {POINTS})")
    known = model.site_names()
    tower_sites = sites_lib.layer_sites(known, tower, point)  # each layer's (or block's) name
    axes = site_axes(tower_sites[0])
    if heads and "head" not in axes:
        stem = tower_sites[0][: -len(point)]
        per_head = sorted(p for p in POINTS if "head" in site_axes(stem + p))
        raise ValueError(f"heads=True needs a per-head point ({per_head}); {point!r} has no head axis")
    if layers is None:
        layers = range(num_layers)
    elif isinstance(layers, (int, np.integer)):
        layers = (layers,)
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(
            f"layers {bad} out of range for the {tower!r} tower's {num_layers} layers "
            f"(valid: 0..{num_layers - 1}, or negative from the end)"
        )
    if not layers:
        raise ValueError("layers is empty")
    layers = tuple(i % num_layers for i in layers)
    if len(tower_sites) != num_layers:
        raise ValueError(f"the {tower!r} tower has {num_layers} layers but {len(tower_sites)} "
                         f"{point!r} sites in this model's site table")
    site_names = tuple(tower_sites[i] for i in layers)
    clean_shape, corrupt_shape = np.shape(clean_inputs), np.shape(corrupt_inputs)
    if clean_shape != corrupt_shape:
        raise ValueError(
            f"clean_inputs of shape {clean_shape} and corrupt_inputs of shape {corrupt_shape} "
            "differ; patching pairs positions one to one, so both must have the same shape"
        )
    return _Plan(tower, point, axes, bool(heads), layers, site_names, num_layers, direction)


def _one_shape(acts, site_names) -> tuple[int, ...]:
    """The one shape the swept sites share; a hierarchical tower's stages differ in tokens and
    width, and a sweep's positions mean the same thing at every layer, so it stays in one stage."""
    shapes = {s: tuple(acts[s].shape) for s in site_names}
    if len(set(shapes.values())) > 1:
        raise ValueError("the swept sites differ in shape, so their positions are not the same: "
                         + ", ".join(f"{s} {v}" for s, v in shapes.items())
                         + "; sweep the layers of one shape (one stage of a hierarchical tower) at a time")
    return shapes[site_names[0]]


def _positions(plan: _Plan, num: int, positions) -> tuple[int, ...]:
    """Validated positions out of the ``num`` along the site's position axis."""
    if positions is None:
        return tuple(range(num))
    if isinstance(positions, (int, np.integer)):
        positions = (positions,)
    positions = tuple(int(p) for p in positions)
    bad = [p for p in positions if not -num <= p < num]
    if bad:
        raise ValueError(
            f"positions {bad} out of range for site {plan.sites[0]!r} with {num} positions"
        )
    if not positions:
        raise ValueError("positions is empty")
    return tuple(p % num for p in positions)


def _num_positions(plan: _Plan, act_shape) -> int:
    return act_shape[plan.axes.index(programs.position_axis(plan.axes))]


def _num_heads(plan: _Plan, act_shape) -> int:
    return act_shape[plan.axes.index("head")] if "head" in plan.axes else 1


def _split_masks(tower: str, text_mask):
    """-> (clean attention mask, corrupt attention mask); one array is shared by both."""
    if text_mask is None:
        return None, None
    if tower != "text":
        raise ValueError(
            f"text_mask is the text tower's padding mask; the swept tower is {tower!r}"
        )
    if isinstance(text_mask, (tuple, list)):
        if len(text_mask) != 2:
            raise ValueError("text_mask is one [batch, tokens] array or a (clean, corrupt) pair")
        return tuple(text_mask)
    return text_mask, text_mask


def _orient(plan: _Plan, clean_inputs, corrupt_inputs, text_mask):
    """-> (base inputs, base mask, source inputs, source mask) for the chosen direction."""
    clean_mask, corrupt_mask = _split_masks(plan.tower, text_mask)
    if plan.direction == "noising":
        return clean_inputs, clean_mask, corrupt_inputs, corrupt_mask
    return corrupt_inputs, corrupt_mask, clean_inputs, clean_mask


def _logit_diff(diff, embeddings):
    return jnp.sum(normalize(embeddings) * diff, axis=-1)


def logit_diff(text_a, text_b) -> jax.tree_util.Partial:
    """The metric ``metric(e) = unit(e) . (text_a - text_b)`` per example: the zero-shot logit
    difference between two prompt embeddings ``[d]`` (unit norm; before the logit scale). A
    ``Partial`` of a module-level function carrying the difference as an array, so every pair of
    prompts (and every rerun of a notebook cell) shares one compiled program."""
    diff = jnp.asarray(text_a, jnp.float32) - jnp.asarray(text_b, jnp.float32)
    return jax.tree_util.Partial(_logit_diff, diff)


def as_metric(metric: Metric):
    """``metric`` as a pytree the compiled sweeps take as an argument: a ``jax.tree_util.Partial``
    (or a pytree dataclass) carries its arrays as leaves, so metrics that differ only in their
    arrays share one program; a plain function is wrapped (and keyed by its identity)."""
    leaves = jax.tree.leaves(metric)
    if isinstance(metric, jax.tree_util.Partial) or (
            leaves and all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves)):
        return metric
    return jax.tree_util.Partial(metric)


def _check_metric(value, batch: int):
    if np.shape(value) != (batch,):
        raise ValueError(
            f"metric returned shape {np.shape(value)}; it must return one scalar per example, "
            f"shape ({batch},)"
        )


def _result(mesh, per_example, base, target, plan: _Plan, positions, method: str) -> CausalEffects:
    """The checked ``CausalEffects``; host arrays when a mesh spread them over processes."""
    if mesh is not None:
        per_example, base, target = parallel.to_host((per_example, base, target))
    return _check_finite(CausalEffects(per_example.mean(0), per_example, base, target, plan.sites,
                                       plan.layers, positions, plan.direction, method))


def _check_finite(effects: CausalEffects) -> CausalEffects:
    """Refuses non-finite runs or effects, naming the run, example, site and position."""
    for run, values in (("base", effects.base), ("source", effects.target)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(values)))
        if bad.size:
            raise FloatingPointError(
                f"the metric of the {run} run is non-finite for examples {bad.tolist()[:8]}: check "
                "those inputs and the metric"
            )
    per = np.asarray(effects.per_example)
    bad = np.argwhere(~np.isfinite(per))
    if bad.size:
        b, layer, p = (int(i) for i in bad[0][:3])
        raise FloatingPointError(
            f"{len(bad)} {effects.method} patching effects are non-finite, the first for example {b} "
            f"at site {effects.sites[layer]!r}, position {effects.positions[p]}"
        )
    return effects


def _progress(iterable, verbose: bool, desc: str):
    if not verbose:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="layer")


# ----------------------------------------------------------------------------------------------
# Public API


def causal_effect(
    model,
    variables,
    tower: str,
    clean_inputs,
    corrupt_inputs,
    metric: Metric,
    *,
    layers: Sequence[int] | int | None = None,
    positions: Sequence[int] | int | None = None,
    point: str = "resid_pre",
    heads: bool = False,
    text_mask=None,
    direction: str = "noising",
    chunk_size: int | None = None,
    verbose: bool = False,
    mesh=None,
) -> CausalEffects:
    """Eq 2 by exact activation patching, for every layer x position (x head).

    Args:
      model: a ``ContrastiveTowers`` model (or any ``SitedModel`` with the ``embed`` /
        ``run_layers(tower, h, start, stop, mask)`` / ``readout(tower, h, inputs)`` /
        ``encode(tower, inputs, attention_mask)`` staging methods).
      variables: ``{"params": ...}``.
      tower: ``"vision"``, ``"text"``, ...
      clean_inputs, corrupt_inputs: the tower's inputs (NHWC pixels, token ids), same shape.
      metric: ``metric(embeddings [B, d]) -> [B]`` (see the module docstring).
      layers: layers to sweep (default all; negative counts from the end).
      positions: token positions to sweep (default all; query positions for ``attn.logits`` /
        ``attn.pattern``).
      point: the per-layer site point, e.g. ``"resid_pre"``, ``"attn.z"``, ``"mlp_out"``.
      heads: for per-head points, patch one (position, head) at a time.
      text_mask: the text tower's ``[B, T]`` padding mask, shared, or a ``(clean, corrupt)`` pair.
      direction: ``"noising"`` patches corrupt values into the clean run; ``"denoising"`` patches
        clean values into the corrupt run.
      chunk_size: patches per vmapped chunk (``jax.lax.map`` batches), to bound memory; default
        all patches of a layer at once (with a ``mesh``: per device).
      verbose: a tqdm bar over layers.
      mesh: split the patches over the mesh's ``data`` axis (``jax.shard_map``); the effects equal
        the single-device ones.

    Returns:
      ``CausalEffects`` with ``effects`` of shape ``[layers, positions]`` (``[..., heads]`` with
      ``heads=True``) and ``per_example`` of shape ``[batch, layers, positions(, heads)]``.
    """
    plan = _plan(model, tower, point, heads, layers, direction, clean_inputs, corrupt_inputs)
    base_in, base_mask, src_in, src_mask = _orient(plan, clean_inputs, corrupt_inputs, text_mask)
    entering = tuple(sites_lib.layer_sites(model.site_names(), tower, "resid_pre")[i] for i in plan.layers)
    metric = as_metric(metric)
    model, variables, scanned = programs.scanned(model, variables, tower)

    # The two unpatched runs, once: the base run's residual entering every swept layer is the
    # clean prefix that every patch of that layer reuses.
    base_metric, base_acts = programs.forward(model, variables, tower, metric, entering, base_in, base_mask)
    src_metric, src_acts = programs.forward(model, variables, tower, metric, plan.sites, src_in, src_mask)
    batch = np.shape(base_in)[0]
    _check_metric(base_metric, batch)

    shape = _one_shape(src_acts, plan.sites)
    num = _num_positions(plan, shape)
    pos = _positions(plan, num, positions)
    num_heads = _num_heads(plan, shape)
    masks = programs.where_masks(plan.axes, num, num_heads, pos, plan.heads)
    stage_mask = programs.stage_mask(model, variables, tower, base_in, base_mask)
    ids = base_in  # readout's inputs: the text tower pools at their EOS token

    k = masks.value.shape[0]
    masks = programs.pad_patches(masks, mesh)
    traced, per_layer_program = programs.sweeps(mesh)
    per_layer = []
    for layer, site, entry in zip(_progress(plan.layers, verbose, f"patching {tower}.{point}"),
                                  plan.sites, entering):
        sweep, at = (traced, jnp.int32(layer)) if scanned else (per_layer_program, layer)
        patched = sweep(model, variables, tower, point, at, chunk_size, metric, base_acts[entry],
                        src_acts[site], masks, stage_mask, ids)
        per_layer.append(patched[:k] - base_metric)  # [K, B]
    per_example = jnp.stack(per_layer, 1)  # [K, L, B]
    grid = (len(pos), num_heads) if plan.heads else (len(pos),)
    per_example = jnp.moveaxis(per_example.reshape(grid + per_example.shape[1:]), -1, 0)
    per_example = jnp.moveaxis(per_example, -1, 1)  # [B, L, P(, H)]
    return _result(mesh, per_example, base_metric, src_metric, plan, pos, "exact")


def attribution_effect(
    model,
    variables,
    tower: str,
    clean_inputs,
    corrupt_inputs,
    metric: Metric,
    *,
    layers: Sequence[int] | int | None = None,
    positions: Sequence[int] | int | None = None,
    point: str = "resid_pre",
    heads: bool = False,
    text_mask=None,
    direction: str = "noising",
    verbose: bool = False,
    mesh=None,
) -> CausalEffects:
    """Eq 2 by attribution patching: ``CE ~ (r' - r0) . dmetric/dr`` at r0, every site at once.

    The first-order Taylor expansion of ``metric`` around the base run; exact when the metric is
    affine in the patched activation, a cheap screen otherwise. Cost: one forward + one backward
    on the base input (gradients through zero-valued ``Add`` edits at every swept site) and one
    forward on the source input. Arguments and result are those of ``causal_effect``
    (``verbose`` is accepted for symmetry; there is no per-layer loop to report); with a ``mesh``
    the examples are split over its ``data`` axis.
    """
    del verbose
    plan = _plan(model, tower, point, heads, layers, direction, clean_inputs, corrupt_inputs)
    inputs = _orient(plan, clean_inputs, corrupt_inputs, text_mask)
    batch = np.shape(inputs[0])[0]
    metric = as_metric(metric)
    if mesh is not None:
        # Examples split over the data axis (when they divide it), everything else replicated,
        # except params already sharded on this mesh (``models.sharding``), which stay as they
        # are; XLA partitions the computation. Not shard_map, and no padding: a metric may hold
        # per-example arrays (one prompt pair per example), which must keep the global batch.
        split = batch % parallel.data_axis_size(mesh) == 0
        sharding = parallel.data_sharding(mesh) if split else parallel.replicated(mesh)
        inputs = jax.device_put(tuple(None if x is None else np.asarray(x) for x in inputs), sharding)
        variables, metric = parallel.keep_or_replicate((variables, metric), mesh)
    _, acts = jax.eval_shape(lambda v, x, m: model.apply(v, tower, x, m, capture=plan.sites, method="encode"),
                             variables, inputs[0], inputs[1])
    _one_shape(acts, plan.sites)
    every, base_metric, src_metric = programs.attribution_jit(
        model, variables, tower, metric, plan.sites, plan.axes, plan.heads, *inputs)
    # every position: [B, L, T(, H)]
    _check_metric(base_metric, batch)
    pos = _positions(plan, every.shape[2], positions)
    per_example = every if pos == tuple(range(every.shape[2])) else every[:, :, np.asarray(pos)]
    return _result(mesh, per_example, base_metric, src_metric, plan, pos, "attribution")
