"""What every experiment checks and sets up before its stages: the compute dtype the config
names, that it runs in one process, and how its model's parameters lie on the config's mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.models import sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """``model.dtype`` of a config as a jnp dtype, or an error listing the choices."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def require_one_process(experiment: str) -> None:
    """Refuses a multi-process launch: each process would redo the whole run and write the same
    files."""
    if jax.process_count() > 1:
        raise NotImplementedError(
            f"the {experiment} experiment runs in one process, not {jax.process_count()}: its stages are not "
            "sharded over processes yet; launch it without --num_processes")


def layout(mesh_config, rules) -> sharding.Layout:
    """The parameter layout a config's ``mesh`` section asks for with a family's rule table:
    tensor parallel over its ``model`` axis, and FSDP over ``data`` with ``mesh.fsdp``. On a mesh
    that splits nothing (``model`` of size 1, no FSDP) the params stay replicated, as before."""
    return sharding.Layout(tuple(rules), fsdp=bool(mesh_config.get("fsdp", False)))


def mesh(mesh_config):
    """The config's mesh (``parallel.mesh_from_config``), or None on one device: the stages then
    take their one-device path unchanged."""
    m = parallel.mesh_from_config(mesh_config)
    return m if m.size > 1 else None


def place_params(params, layout: sharding.Layout, mesh, dtype=None):
    """A checkpoint's host (numpy) params on their devices, cast to ``dtype`` on the host first.
    On a mesh the layout splits, each device receives only its shards (``Layout.place``): the
    whole model is never on one device, which is what lets a 6.7b OPT load onto 16 GB cores.
    Otherwise they are device arrays, as a one-device run always had them."""
    if dtype is not None:
        params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
    if mesh is not None and layout.splits(mesh):
        return layout.place(params, mesh)
    return jax.tree.map(jnp.asarray, params)
