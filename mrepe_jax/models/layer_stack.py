"""A tower's layers as one stacked parameter tree run by one ``lax.scan`` (DESIGN.md §3).

Compile once: a layer stack run as a Python loop puts ``num_layers`` copies of the layer into
every program, and a patching sweep whose start layer is static compiles one program per layer.
Stacked, the layer body is traced once and the layer index is an array, so an exact sweep over
every layer is one program (``run_stack`` with a traced ``start``: each layer runs under a
``lax.cond`` on ``start <= i < stop``, a real branch since the predicate is not vmapped).

Layout: per-layer params ``.../layers/{i}/<leaf>`` (what checkpoints convert to) become
``.../layers/<leaf>`` with a leading ``[num_layers]`` axis; ``stack_layer_params`` and
``unstack_layer_params`` convert between the two, for any tower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import sites as sites_lib

LAYERS = "layers"


def _per_layer(node) -> bool:
    return isinstance(node, Mapping) and bool(node) and all(k.isdigit() for k in node)


def stack_layer_params(params: Mapping) -> dict:
    """Every ``layers/{0..n-1}/...`` subtree of ``params`` stacked into ``layers/...`` ``[n, ...]``."""
    out = {}
    for key, value in params.items():
        if key == LAYERS and _per_layer(value):
            n = len(value)
            missing = sorted(set(map(str, range(n))) - set(value))
            if missing:
                raise ValueError(f"cannot stack layers {sorted(value, key=int)}: layers {missing} are missing")
            out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *[value[str(i)] for i in range(n)])
        elif isinstance(value, Mapping):
            out[key] = stack_layer_params(value)
        else:
            out[key] = value
    return out


def check_layout(params: Mapping, scanned: bool, path: str = "params") -> None:
    """Refuses params whose layer layout is not the model's: per-layer ``layers/0/...`` (the
    checkpoint's) for a model built with ``Execution(scan_layers=True)``, or stacked ``layers/...``
    for one without; the error names the conversion (flax's own says only that a shape differs)."""
    for key, value in params.items():
        where = f"{path}/{key}"
        if key == LAYERS and isinstance(value, Mapping):
            if scanned and _per_layer(value):
                raise ValueError(
                    f"{where} holds per-layer params (layers/0, layers/1, ...: the checkpoint's "
                    "layout) but the model stacks its layers (Execution(scan_layers=True)): pass "
                    "stack_layer_params(params) (mrepe_jax.models.stack_layer_params), or load with "
                    "load_pretrained(..., execution=Execution(scan_layers=True)), which stacks them")
            if not scanned and value and not _per_layer(value):
                raise ValueError(
                    f"{where} holds stacked layers [n, ...] but the model runs them one by one "
                    "(Execution(scan_layers=False)): pass unstack_layer_params(params), or build "
                    "the model with Execution(scan_layers=True)")
        elif isinstance(value, Mapping):
            check_layout(value, scanned, where)


def unstack_layer_params(params: Mapping) -> dict:
    """The inverse of ``stack_layer_params`` (per-layer params pass through unchanged)."""
    out = {}
    for key, value in params.items():
        if key == LAYERS and isinstance(value, Mapping) and not _per_layer(value):
            sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(value)}
            if len(sizes) != 1:
                raise ValueError(f"stacked layers have leading axes of different sizes {sorted(sizes)}")
            n = sizes.pop()
            out[key] = {str(i): jax.tree.map(lambda a, i=i: a[i], value) for i in range(n)}
        elif isinstance(value, Mapping):
            out[key] = unstack_layer_params(value)
        else:
            out[key] = value
    return out


def init_stacked(layer: nn.Module, num_layers: int, *example_args):
    """An initializer ``key -> stacked params`` of ``num_layers`` independent ``layer`` inits."""

    def init(key):
        keys = jax.random.split(key, num_layers)
        return jax.vmap(lambda k: layer.init(k, *example_args)["params"])(keys)

    return init


def is_static(*values) -> bool:
    return all(isinstance(v, (int, np.integer)) for v in values)


def run_stack(layer: nn.Module, params, h, sites: sites_lib.Sites, *, start, stop, num_layers: int,
              args=()) -> tuple[Any, dict]:
    """Runs layers ``[start, stop)`` of the stacked ``params`` on ``h``: ``(h, captures)``.

    ``layer`` is an unbound module called as ``layer.apply({"params": p}, h, sites, *args, i)``
    with its traced index ``i``. Static ``start``/``stop`` scan over that slice; traced ones scan
    over every layer and skip those outside the range (captures need a static range).
    """
    capture = bool(sites.capture)
    static = is_static(start, stop)
    if capture and not static:
        raise ValueError("capturing sites needs a static layer range; a traced start/stop is for "
                         "edit sweeps (AtLayer)")

    def apply(p, h, i):
        if capture:
            out, state = layer.apply({"params": p}, h, sites, *args, i, mutable=[sites_lib.COLLECTION])
            return out, sites_lib.collect(state.get(sites_lib.COLLECTION, {}))
        return layer.apply({"params": p}, h, sites, *args, i), {}

    if static:
        def body(h, xs):
            p, i = xs
            return apply(p, h, i)

        h, caps = jax.lax.scan(body, h, (jax.tree.map(lambda a: a[start:stop], params),
                                         jnp.arange(start, stop)))
        return h, sites_lib.per_layer_captures(caps, sites.capture, range(start, stop)) if capture else {}

    def body(h, xs):
        p, i = xs
        run = jax.lax.cond((i >= start) & (i < stop), lambda h: apply(p, h, i)[0], lambda h: h, h)
        return run, None

    h, _ = jax.lax.scan(body, h, (params, jnp.arange(num_layers)))
    return h, {}
