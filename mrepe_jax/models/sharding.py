"""Parameters sharded over the mesh from one declarative rule table per model family (DESIGN.md §7).

A *rule table* is a tuple of ``(regex, PartitionSpec)`` pairs over a parameter's path (``"/"``-joined
keys, as the checkpoint names it: ``vision_model/encoder/layers/3/self_attn/q_proj/kernel``); the
first regex that ``re.search``-es the path gives the spec, written for the unstacked parameter. The
modules never change: ``param_specs`` maps a params pytree to a pytree of ``PartitionSpec``, and
``shard_params`` places the params with them, after which ``jax.jit`` (GSPMD) partitions every
program that reads them; outputs are the same whatever the specs, only memory and collectives differ.

The tables follow Megatron's tensor parallelism over the mesh axis ``model``: column-parallel
q/k/v and the MLP's first matmul (the output features split), row-parallel attention output and
the MLP's second matmul (the input features split), vocabulary-parallel token embeddings (and the
tied lm_head with them), norms, biases of row-parallel layers and position embeddings replicated.

- **Stacked layers** (``Execution(scan_layers=True)``, ``layers/<leaf>`` with a leading layer axis):
  the rule's spec gets ``None`` in front, so the layer axis stays whole and the others shard.
- **FSDP** (``fsdp=True``): every parameter of ``fsdp_min_size`` elements or more also shards its
  largest dimension that the rule leaves unsharded (and that divides) over ``data``.
- **Errors**: a parameter no rule matches is an error naming it; so is a spec whose rank is not
  the parameter's. A dimension its mesh axis does not divide is an error naming the parameter, the
  dimension and the axis, or, with ``indivisible="replicate"``, left whole with a warning that says so.
- Axes the mesh lacks (a 1-D ``data`` mesh has no ``model``) count as size 1: the table still
  applies, and replicates what it would have split.

A ``Layout`` bundles a table with its strategy (FSDP or not, what an indivisible dimension does):
what a config's ``mesh`` section chooses, and what ``train.loop.fit(state_rules=)`` takes.

``param_specs`` needs only shapes and axis sizes, so ``jax.eval_shape`` params and a dict of axis
sizes project a model's per-device bytes without its weights (``per_device_bytes``);
``abstract_params`` is the sharded target a checkpoint restores into on any mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, P | None]]  # None: replicated, whatever the parameter's rank

DATA, MODEL = "data", "model"
REPLICATED = None
# The Megatron specs of a Dense's kernel [in, out] and bias [out].
COLUMN, COLUMN_BIAS, ROW = P(None, MODEL), P(MODEL), P(MODEL, None)
INDIVISIBLE = ("error", "replicate")


def path_of(key_path) -> str:
    """``"a/b/0/c"`` for a pytree key path (dict keys and sequence indices)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _stacked(path: str, ndim: int, spec: P) -> bool:
    return ndim == len(spec) + 1 and re.search(r"(^|/)layers/(?!\d+(/|$))", path) is not None


def _axis_sizes(mesh) -> dict[str, int]:
    return dict(mesh) if isinstance(mesh, Mapping) else dict(mesh.shape)


def spec_for(path: str, shape: tuple[int, ...], rules: Rules, axis_sizes: Mapping[str, int], *,
             fsdp: bool = False, fsdp_min_size: int = 2 ** 18, indivisible: str = "error") -> P:
    """The ``PartitionSpec`` of one parameter (module docstring)."""
    if indivisible not in INDIVISIBLE:
        raise ValueError(f"indivisible must be one of {INDIVISIBLE}, got {indivisible!r}")
    rule = next((spec for pattern, spec in rules if re.search(pattern, path)), False)
    if rule is False:
        raise ValueError(f"no sharding rule matches parameter {path!r} of shape {tuple(shape)}: add one to "
                         "the family's rule table")
    stacked = rule is not REPLICATED and _stacked(path, len(shape), rule)
    spec = (None,) * len(shape) if rule is REPLICATED else (None,) * stacked + tuple(rule)
    if len(spec) != len(shape):
        raise ValueError(f"the sharding rule for {path!r} gives {P(*spec)} ({len(spec)} axes) but the "
                         f"parameter has shape {tuple(shape)}")
    out = []
    for dim, (size, axis) in enumerate(zip(shape, spec)):
        n = axis_sizes.get(axis, 1) if axis is not None else 1
        if axis is not None and size % n:
            message = (f"parameter {path!r} dim {dim} of size {size} does not divide over mesh axis "
                       f"{axis!r} of size {n}")
            if indivisible == "error":
                raise ValueError(message + " (indivisible='replicate' leaves it whole instead)")
            warnings.warn(message + ": left replicated along it", stacklevel=2)
            axis = None
        out.append(axis if n > 1 else None)
    data = axis_sizes.get(DATA, 1)
    if fsdp and data > 1 and math.prod(shape) >= fsdp_min_size:
        first = int(stacked)  # never the layer axis
        free = [d for d in range(first, len(shape)) if out[d] is None and shape[d] % data == 0]
        if free:
            out[max(free, key=lambda d: shape[d])] = DATA
    return P(*out)


def param_specs(params: Any, rules: Rules, mesh, **kw) -> Any:
    """A pytree of ``PartitionSpec`` shaped like ``params`` (arrays or ``ShapeDtypeStruct``);
    ``mesh``: a ``Mesh`` or ``{axis: size}``. Keywords: those of ``spec_for``."""
    sizes = _axis_sizes(mesh)
    return jax.tree_util.tree_map_with_path(lambda kp, x: spec_for(path_of(kp), tuple(np.shape(x)), rules,
                                                                   sizes, **kw), params)


def state_specs(state: Any, rules: Rules, mesh, **kw) -> Any:
    """``param_specs`` for a train state (params, optimizer moments, counters): each leaf takes the
    rule of the longest tail of its path that a rule matches (``params/vision_model/...`` and
    ``opt_state/0/mu/vision_model/...`` both as ``vision_model/...``), so the moments shard as
    their params do; a scalar no rule matches (the step, a schedule's count) is replicated."""
    sizes = _axis_sizes(mesh)

    def one(key_path, x):
        keys = path_of(key_path).split("/")
        # The tail after the state's own attributes (``.params``, ``.mu``) first: that is the
        # parameter's own path, so a warning about it reads the same for its moments (and is
        # shown once).
        own = max((i + 1 for i, k in enumerate(keys) if k.startswith(".")), default=0)
        for i in [own] * (own < len(keys)) + [i for i in range(len(keys)) if i != own]:
            tail = "/".join(keys[i:])
            if any(re.search(pattern, tail) for pattern, _ in rules):
                return spec_for(tail, tuple(np.shape(x)), rules, sizes, **kw)
        if np.ndim(x) == 0:
            return P()
        raise ValueError(f"no sharding rule matches any tail of the state's {path_of(key_path)!r} of shape "
                         f"{tuple(np.shape(x))}: add one to the family's rule table")

    return jax.tree_util.tree_map_with_path(one, state)


def shard_params(params: Any, rules: Rules, mesh, **kw) -> Any:
    """``params`` placed on ``mesh`` by the rule table (``param_specs``)."""
    specs = param_specs(params, rules, mesh, **kw)
    return jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                               is_leaf=lambda x: isinstance(x, P)))


def abstract_params(params: Any, rules: Rules, mesh, **kw) -> Any:
    """``params``' shapes and dtypes as ``jax.ShapeDtypeStruct`` leaves carrying the rule table's
    shardings on ``mesh``: the target that orbax (``StandardRestore``, ``train.loop.restore_latest``)
    restores a checkpoint into, whatever mesh saved it."""
    specs = param_specs(params, rules, mesh, **kw)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=NamedSharding(mesh, s)),
                        params, specs, is_leaf=lambda x: isinstance(x, P))


def per_device_bytes(params: Any, specs: Any, mesh) -> int:
    """The bytes one device holds of ``params`` sharded by ``specs`` (the largest shard of each
    parameter, summed): shapes and dtypes are all it reads."""
    sizes = _axis_sizes(mesh)
    total = 0
    for x, spec in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
        shape = np.shape(x)
        shard = [math.ceil(d / sizes.get(a, 1)) if a is not None else d for d, a in zip(shape, tuple(spec))]
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return int(total)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A family's rule table with its strategy: ``fsdp`` (and the size from which a parameter is
    FSDP-sharded) and ``indivisible`` (``spec_for``). Frozen and hashable, so that programs
    compiled for one layout are reused (``train.loop``). ``indivisible`` defaults to
    ``"replicate"`` here: a real checkpoint's odd vocabulary should not stop a run."""

    rules: tuple
    fsdp: bool = False
    fsdp_min_size: int = 2 ** 18
    indivisible: str = "replicate"

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple((str(r), s) for r, s in self.rules))
        if self.indivisible not in INDIVISIBLE:
            raise ValueError(f"indivisible must be one of {INDIVISIBLE}, got {self.indivisible!r}")

    @classmethod
    def of(cls, rules_or_layout) -> Layout:
        """A ``Layout`` as is, or a bare rule table with the defaults."""
        return rules_or_layout if isinstance(rules_or_layout, Layout) else cls(tuple(rules_or_layout))

    def _kw(self) -> dict:
        return dict(fsdp=self.fsdp, fsdp_min_size=self.fsdp_min_size, indivisible=self.indivisible)

    def splits(self, mesh) -> bool:
        """Whether this layout shards anything on ``mesh``: a ``model`` axis over 1, or FSDP with a
        ``data`` axis over 1. Otherwise every parameter would be replicated anyway."""
        sizes = _axis_sizes(mesh)
        return sizes.get(MODEL, 1) > 1 or (self.fsdp and sizes.get(DATA, 1) > 1)

    def param_specs(self, params: Any, mesh) -> Any:
        return param_specs(params, self.rules, mesh, **self._kw())

    def state_specs(self, state: Any, mesh) -> Any:
        return state_specs(state, self.rules, mesh, **self._kw())

    def place(self, params: Any, mesh) -> Any:
        """``params`` sharded on ``mesh`` when the layout splits anything there, else as they are
        (host arrays stay host arrays: the one-device path does not change)."""
        return shard_params(params, self.rules, mesh, **self._kw()) if self.splits(mesh) else params

    def abstract(self, params: Any, mesh) -> Any:
        return abstract_params(params, self.rules, mesh, **self._kw())

    def per_device_bytes(self, params: Any, mesh) -> int:
        return per_device_bytes(params, self.param_specs(params, mesh), mesh)
