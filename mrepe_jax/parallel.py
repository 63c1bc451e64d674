"""The one module that owns the device mesh (DESIGN.md §7).

Everything data-parallel in the package goes through here: a 1-D (or n-D) mesh whose ``data`` axis
splits batches, ``NamedSharding``s built from ``jax.P``, and ``shard_batch`` to place host (numpy)
batches. Compiled functions take these shardings through ``jax.jit(in_shardings=,
out_shardings=)``; there is no ``pjit``, ``pmap`` or ``jax.experimental.shard_map`` anywhere.

Axis types: the mesh defaults to ``AxisType.Auto``, i.e. GSPMD propagates shardings through the
model and inserts the all-reduces that a batch reduction needs. ``Explicit`` axes (``jax.make_mesh``'s
own default since 0.7) make sharding part of every array's type, which forces every op in a model to
state how it treats a sharded batch axis; for pure data parallelism that buys nothing and breaks on
ops such as gathers with batch-sharded indices, so it is opt-in through ``axis_types``.

Tests run on CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set *before* jax is
imported (in a subprocess, so the rest of a test session keeps one device).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

DATA = "data"
MODEL = "model"
# Axis names a config may use: ``data`` splits batches (and patch sweeps); ``model`` splits the
# parameters of large towers (tensor parallelism, by the rule tables of ``models.sharding``).
AXES = (DATA, MODEL)


def make_mesh(
    shape: Sequence[int] | None = None,
    names: Sequence[str] = (DATA,),
    axis_types: Sequence[AxisType] | None = None,
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """A mesh over ``devices`` (default: all of them) with axes ``names`` of sizes ``shape``.

    ``shape=None`` puts every device on the first axis and gives the others size 1, so
    ``make_mesh()`` is the pure data-parallel mesh. ``axis_types`` defaults to ``Auto`` for every
    axis (see the module docstring for why).
    """
    names = tuple(names)
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = (len(devices),) + (1,) * (len(names) - 1)
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(names):
        raise ValueError(f"mesh shape {shape} has {len(shape)} axes but names {names} has {len(names)}")
    if math.prod(shape) > len(devices):
        raise ValueError(
            f"mesh shape {shape} needs {math.prod(shape)} devices but only {len(devices)} are "
            "available (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
            "importing jax)"
        )
    if axis_types is None:
        axis_types = (AxisType.Auto,) * len(names)
    return jax.make_mesh(shape, names, axis_types=tuple(axis_types), devices=devices)


def mesh_from_config(config) -> Mesh:
    """The mesh a config asks for: ``config.shape`` (``None``: every device on ``data``) over
    ``config.axes``; axes must be among ``AXES`` and include ``data``."""
    axes = tuple(config.get("axes", (DATA,)))
    unknown = [a for a in axes if a not in AXES]
    if unknown or DATA not in axes:
        raise ValueError(f"mesh axes {axes}: " + (f"unknown axis {unknown[0]!r}" if unknown else
                         f"no {DATA!r} axis") + f"; axes are named from {AXES} and include {DATA!r}")
    shape = config.get("shape", None)
    return make_mesh(None if shape is None else tuple(shape), axes)


def is_primary() -> bool:
    """Whether this is process 0: the one that writes files (workdir, plots, checkpoint moves)
    and shows progress, while every process computes the same figures."""
    return jax.process_index() == 0


def process_rows(global_rows: int) -> slice:
    """The rows of a global batch that this process reads: its contiguous ``1/process_count`` share,
    matching the devices it owns on the ``data`` axis (``global_batch``)."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ValueError(f"a global batch of {global_rows} rows does not split over {n} processes; "
                         f"use a batch size divisible by {n}")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def global_batch(local_batch: Any, mesh: Mesh, axis: str = DATA) -> Any:
    """Global arrays, split over ``axis``, from each process's own rows (``process_rows``): in one
    process the local batch is the whole batch; with several, no process holds another's data."""
    n = data_axis_size(mesh, axis)
    rows = batch_size(local_batch) * jax.process_count()
    if rows % n:
        raise ValueError(
            f"batch size {rows} is not divisible by the {axis!r} mesh axis size {n}; pad the batch "
            f"to a multiple of {n} (mrepe_jax.parallel.pad_batch) or change the batch size"
        )
    sharding = data_sharding(mesh, axis)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_batch)


def process_sizes(n: int) -> np.ndarray:
    """Every process's ``n`` (``[process_count]``, a host collective): how processes agree on a
    padded batch size, and on when every one of them has run out of data."""
    if jax.process_count() == 1:
        return np.asarray([n])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(n, np.int64)))


def gather_rows(tree: Any) -> Any:
    """Each process's rows of a pytree of host arrays, concatenated in process order on every
    process (the inverse of reading ``process_rows``; processes may hold different numbers of
    rows); the identity in a single process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def one(x):
        x = np.asarray(x)
        sizes = process_sizes(x.shape[0])
        padded = np.concatenate([x, np.zeros((sizes.max() - x.shape[0],) + x.shape[1:], x.dtype)])
        blocks = np.asarray(multihost_utils.process_allgather(padded))  # [processes, max, ...]
        return np.concatenate([b[:n] for b, n in zip(blocks, sizes)])

    return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
    """numpy copies of a pytree of arrays, including global ones that span other processes: a
    replicated array is read from a local copy, a sharded one gathered (``process_allgather``)."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def data_sharding(mesh: Mesh, axis: str = DATA) -> NamedSharding:
    """Leading (batch) axis split over ``axis``, every other axis replicated."""
    _check_axis(mesh, axis)
    return NamedSharding(mesh, jax.P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: parameters, accumulated statistics, directions."""
    return NamedSharding(mesh, jax.P())


def on_mesh(x: Any, mesh: Mesh) -> bool:
    """Whether ``x`` is an array already laid out by a ``NamedSharding`` over ``mesh``."""
    sharding = getattr(x, "sharding", None)
    return isinstance(sharding, NamedSharding) and sharding.mesh == mesh


def keep_or_replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` on ``mesh``: leaves already laid out over it (params sharded by a family's rule
    table, ``models.sharding``) stay as they are, every other leaf is replicated. What a stage
    does with the params and constants it is handed, so that a model sharded over ``model`` is
    never gathered back onto each device."""
    return jax.device_put(tree, jax.tree.map(
        lambda x: x.sharding if on_mesh(x, mesh) else replicated(mesh), tree))


def data_axis_size(mesh: Mesh, axis: str = DATA) -> int:
    _check_axis(mesh, axis)
    return int(mesh.shape[axis])


def shard_batch(batch: Any, mesh: Mesh, axis: str = DATA) -> Any:
    """Places a pytree of host arrays on ``mesh`` with every leaf's leading axis split over ``axis``.

    All leaves must share the same leading (batch) size, and it must be divisible by the size of
    the ``axis`` mesh axis: an uneven split would silently hand some devices padding, so the caller
    pads explicitly (``pad_batch``) and carries a validity mask instead.
    """
    n = data_axis_size(mesh, axis)
    size = batch_size(batch)
    if size % n:
        raise ValueError(
            f"batch size {size} is not divisible by the {axis!r} mesh axis size {n}; pad the batch "
            f"to a multiple of {n} (mrepe_jax.parallel.pad_batch) or change the batch size"
        )
    return jax.device_put(batch, data_sharding(mesh, axis))


def batch_size(batch: Any) -> int:
    """The common leading-axis size of a pytree of arrays (an error names disagreeing leaves)."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("the batch has no array leaves")
    sizes = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every leaf needs a batch axis")
        sizes[jax.tree_util.keystr(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def pad_batch(batch: Any, size: int) -> tuple[Any, np.ndarray]:
    """Pads every leaf of a host batch along axis 0 to ``size`` rows (repeating row 0, so padded rows
    stay valid model inputs) and returns ``(padded, valid)`` with a boolean ``valid`` mask ``[size]``.

    Padding every batch to one size also keeps a jit'd step at a single compilation.
    """
    n = batch_size(batch)
    if n == 0:
        raise ValueError("cannot pad an empty batch (0 rows): there is no row to repeat")
    if n > size:
        raise ValueError(f"batch of {n} rows is larger than the padded size {size}")
    valid = np.arange(size) < n
    if n == size:
        return batch, valid

    def pad(x):
        x = np.asarray(x)
        fill = np.broadcast_to(x[:1], (size - n,) + x.shape[1:])
        return np.concatenate([x, fill], axis=0)

    return jax.tree.map(pad, batch), valid


def _check_axis(mesh: Mesh, axis: str) -> None:
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh axes are {tuple(mesh.axis_names)}; there is no {axis!r} axis")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout_seconds: int = 100) -> None:
    """Joins a multi-host run (``jax.distributed.initialize``) when asked to.

    With all three arguments set, uses them; with none, does nothing on a single host, and lets
    JAX auto-detect the cluster on TPU pods and SLURM (``MREPE_DISTRIBUTED=auto``). A partial set
    is an error naming what is missing. CPU processes talk through gloo collectives. A process
    that dies is noticed by the others within ``heartbeat_timeout_seconds`` (sooner when they are
    in a collective with it), and they stop with an error instead of waiting for it.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if all(v is None for v in given.values()):
        if os.environ.get("MREPE_DISTRIBUTED") == "auto":
            jax.distributed.initialize()
        return
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"multi-host launch needs all of coordinator_address, num_processes and "
                         f"process_id; missing {missing}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is not in [0, num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)


@contextlib.contextmanager
def fail_fast():
    """In a multi-process run, turns a failed collective into one clear error and an exit.

    When a process dies, the others' next collective fails (gloo: "connection closed by peer");
    left alone, each would then wait in JAX's shutdown barrier until the heartbeat timeout and
    abort with a stack dump. Here the process says what happened and exits at once (status 1).
    Single-process runs are unaffected.
    """
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        print(f"process {jax.process_index()} of {jax.process_count()}: a collective with the other "
              f"processes failed, so another process has most likely died; stopping.\n  {e}",
              file=sys.stderr, flush=True)
        os._exit(1)
