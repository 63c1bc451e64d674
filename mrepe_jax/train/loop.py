"""The project's one training loop: jit'd steps, a deterministic batch stream, orbax checkpoints.

Every trained component (the ToyWorld CLIP, alignment maps, probes that need it) calls ``fit``
with its own ``step_fn`` instead of copying a loop. Batches are a pure function of the step
number, so a run killed after k steps and resumed sees exactly the batches an uninterrupted run
would, and ends with the same parameters.

What ``fit`` guarantees about its checkpoint directory:

- nothing non-finite is ever saved: every step's loss *and* every floating leaf of the new state
  are checked (on device, read back one step later so the host never stalls the pipeline) and a
  non-finite one stops training with an error naming the first bad step and leaf;
- pending asynchronous saves are finished and the manager closed on every exit path;
- a checkpoint that cannot be restored (corrupt files) or holds non-finite values is moved aside
  to ``<step>.corrupt`` with a warning once an earlier step restores; when none restores, one error
  names the directory and what to delete;
- the run's trajectory-defining settings (``num_steps`` and the caller's ``run_config``) are saved
  with every checkpoint; resuming with different ones is an error naming each difference, since a
  resumed run would silently follow another schedule.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.training.train_state import TrainState
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from mrepe_jax import parallel
from mrepe_jax.models import sharding as sharding_lib


@dataclasses.dataclass
class FitResult:
    state: TrainState
    losses: np.ndarray  # the loss of every step run in THIS call (not of restored steps)
    resumed_from: int  # 0 when training started fresh
    # Every metric ``step_fn`` returned, stacked over the steps of this call: ``{name: [steps, ...]}``.
    metrics: dict = dataclasses.field(default_factory=dict)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory can be used to resume."""


def checkpoint_manager(directory: str | os.PathLike, keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )


def _float_leaves(tree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]


def _finite_flags(loss, state) -> jax.Array:
    """``[1 + leaves]`` booleans: the loss, then each floating leaf of ``state`` (on device)."""
    return jnp.stack([jnp.all(jnp.isfinite(loss))]
                     + [jnp.all(jnp.isfinite(leaf)) for _, leaf in _float_leaves(state)])


def _flag_names(state) -> list[str]:
    """What each entry of ``_finite_flags`` checks, for error messages."""
    return ["the loss"] + [f"the state at {name}" for name, _ in _float_leaves(state)]


def _first_bad(flags, names: list[str]) -> str | None:
    flags = np.asarray(flags)
    return None if flags.all() else names[int(np.argmin(flags))]


#: Settings of a run that change how it executes but not its trajectory: callers leave them out of
#: ``fit``'s ``run_config``, so a resume may change them.
EXECUTION_KEYS = ("checkpoint_every", "steps_per_call")


def steps_per_call_for(steps_per_call: int, checkpoint_every: int, start: int, end: int) -> int:
    """The steps one compiled call of ``fit`` runs: the largest ``k <= steps_per_call`` dividing
    ``checkpoint_every``, ``start`` and ``end``, so that every call runs the same number of steps
    (one program) and no call straddles a checkpoint or the end."""
    g = math.gcd(math.gcd(checkpoint_every, start), end)
    return max(d for d in range(1, max(1, steps_per_call) + 1) if g % d == 0)


def _save_args(state, run: Mapping[str, Any]):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), run=ocp.args.JsonSave(dict(run)))


def _diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != now.get(k, "<absent>")]


def _move_aside(directory: str, step: int) -> str:
    src = os.path.join(directory, str(step))
    dst, n = f"{src}.corrupt", 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src}.corrupt{n}"
    if parallel.is_primary():
        os.rename(src, dst)
    return dst


def restore_latest(manager: ocp.CheckpointManager, state: TrainState,
                   run: Mapping[str, Any] | None = None) -> TrainState | None:
    """The newest usable checkpoint in ``manager`` restored into ``state``'s structure (which may
    be abstract, ``jax.ShapeDtypeStruct`` leaves), or None when the directory holds none.

    ``run``: the settings the caller is about to train with; a checkpoint saved with other
    settings is an error naming each difference (``fit`` passes ``num_steps`` and its
    ``run_config``). Unreadable or non-finite steps fall back to the previous one, see the module
    docstring.
    """
    directory = str(manager.directory)
    failures: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved = manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]
        except Exception as e:  # noqa: BLE001 - any unreadable step is reported, then skipped
            failures.append((step, f"its run settings are unreadable ({_short(e)})"))
            continue
        if run is not None and _diff(saved, run):
            raise ValueError(
                f"the checkpoint at step {step} in {directory} was saved by a run with other "
                "settings, so resuming it would follow another trajectory:\n  "
                + "\n  ".join(_diff(saved, run))
                + f"\nRestore those settings, use another checkpoint directory, or delete {directory} "
                "to start over."
            )
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state)))["state"]
        except Exception as e:  # noqa: BLE001
            failures.append((step, f"it cannot be read ({_short(e)})"))
            continue
        # Checked on the host: eager device ops would compile one program per leaf shape.
        flags = [True] + [bool(np.isfinite(np.asarray(leaf)).all()) for _, leaf in _float_leaves(restored)]
        bad = _first_bad(flags, _flag_names(restored))
        if bad is not None:
            failures.append((step, f"{bad} is non-finite"))
            continue
        for bad_step, why in failures:
            moved = _move_aside(directory, bad_step)
            warnings.warn(f"checkpoint step {bad_step} in {directory} is unusable: {why}; moved it "
                          f"to {moved} and resumed from step {step}", RuntimeWarning, stacklevel=3)
        if failures:
            manager.reload()
        return restored
    if failures:
        # The failed restores' sibling reads are still completing in tensorstore's threads; let
        # them land while their noise is filtered (``_quiet_failed_reads``), so that this error is
        # the last thing printed. A fixed short wait: tensorstore offers no handle to wait on.
        time.sleep(0.5)
        listed = "; ".join(f"step {s}: {why}" for s, why in failures)
        raise CheckpointError(
            f"no checkpoint in {directory} can be restored ({listed}). If the model or its "
            f"config changed, use another checkpoint directory; to start over, delete {directory}."
        )
    return None


class _DropFailedReadNoise(logging.Filter):
    def filter(self, record):
        return "exception was never retrieved" not in record.getMessage()


@contextlib.contextmanager
def _quiet_failed_reads():
    """Silences the aftermath of an orbax read that failed, which this module reports itself.

    When one array of a checkpoint fails to read, orbax's ``asyncio.gather`` raises and closes its
    event loop while tensorstore still completes the other reads: each completion then prints an
    "Event loop is closed" traceback (through ``sys.unraisablehook``) and asyncio logs "exception
    was never retrieved". Only those two are dropped, and only while ``fit`` holds its checkpoint
    manager (the stray completions may land after the restore has returned).
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    log_filter = _DropFailedReadNoise()
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(log_filter)
    try:
        yield
    finally:
        sys.unraisablehook = previous
        logging.getLogger("asyncio").removeFilter(log_filter)


def _short(e: Exception, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def fit(
    state: TrainState | Callable[[], TrainState],
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    batch_fn: Callable[[int], Any],
    num_steps: int,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    stop_after: int | None = None,
    run_config: Mapping[str, Any] | None = None,
    desc: str = "train",
    progress: bool = True,
    mesh=None,
    steps_per_call: int = 1,
    batch_spec: Any = None,
    state_rules: Any = None,
) -> FitResult:
    """Runs ``step_fn`` from ``state.step`` (or the latest checkpoint) up to ``num_steps``.

    ``state`` may be a function that builds the initial state: it is then called only when there
    is no checkpoint to resume (a resume restores into its abstract shapes, ``jax.eval_shape``).

    ``step_fn(state, batch) -> (state, metrics)`` must return ``metrics["loss"]``; it is jit'd
    here. ``batch_fn(step)`` gives the batch of a step. ``stop_after`` ends the call early after
    that many steps (a checkpoint is written), which is how tests simulate a killed run.
    ``run_config``: JSON-able settings that define the trajectory (schedule, batch size, seeds, data),
    saved with each checkpoint and compared on resume, with ``num_steps``. Raises
    ``FloatingPointError`` at the first step whose loss or new state is non-finite, before any save
    of it.

    ``mesh``: data parallelism. The state is replicated and each batch split over the ``data``
    axis; in a multi-process run ``batch_fn`` returns this process's rows of the global batch
    (``parallel.process_rows``) and orbax writes the checkpoints collectively. The result equals
    the single-device one up to float reassociation.

    ``state_rules``: with a ``mesh``, a family's sharding rule table (``models.*.sharding``) or a
    ``models.sharding.Layout`` (the table with FSDP): the state (params and optimizer moments
    alike, ``models.sharding.state_specs``) is sharded by it over the mesh's ``model`` (and, with
    FSDP, ``data``) axis instead of replicated (a dimension the axis does not divide stays whole,
    with a warning naming it); checkpoints are saved and restored so, onto whatever mesh the
    resuming run has.

    ``steps_per_call``: at most this many steps per compiled call (a ``lax.scan``; the call's
    batches are on the device together, so keep it small for large batches). The count used is
    the largest that divides ``checkpoint_every`` and the run's first and last step
    (``steps_per_call_for``), so every call runs alike; what a run saves, checks and returns does
    not depend on it. Measured on the ToyWorld CLIP (batch 128, 2-core CPU): 10 steps per call
    ran 41 ms per step against 53 ms one step at a time.

    ``batch_spec``: the shapes and dtypes of one step's (global) batch, a pytree of
    ``jax.ShapeDtypeStruct`` (``spec_of``). When given, the step is compiled from it while a
    background thread builds the first call's batches, so that a slow first batch (rendering a
    data pool) and compiling overlap instead of adding up. A first batch of other shapes is an
    error naming the leaf.
    """
    if num_steps < 0 or checkpoint_every < 1 or steps_per_call < 1:
        raise ValueError(f"need num_steps >= 0, checkpoint_every >= 1 and steps_per_call >= 1, got "
                         f"{num_steps}, {checkpoint_every} and {steps_per_call}")
    run = {"num_steps": int(num_steps), **json.loads(json.dumps(dict(run_config or {})))}
    init = state if callable(state) else (lambda: state)
    if state_rules is not None and mesh is None:
        raise ValueError("fit: state_rules shard the state over a mesh; pass mesh= as well")
    loop = _Loop(step_fn, batch_fn, num_steps, checkpoint_every, stop_after, run, desc,
                 progress and parallel.is_primary(), mesh, steps_per_call, batch_spec,
                 None if state_rules is None else sharding_lib.Layout.of(state_rules))
    if checkpoint_dir is None:
        return loop.train(loop.place(init()), None)
    manager = checkpoint_manager(checkpoint_dir)
    with _quiet_failed_reads():
        try:
            target = loop.abstract(jax.eval_shape(init) if callable(state) else state)
            restored = restore_latest(manager, target, run)
            return loop.train(loop.place(init()) if restored is None else restored, manager)
        finally:
            manager.wait_until_finished()
            manager.close()


def spec_of(tree, sharding=None):
    """``tree``'s shapes and dtypes as ``jax.ShapeDtypeStruct`` leaves (``fit``'s ``batch_spec``),
    each with ``sharding`` when given."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x), sharding=sharding), tree)


def _check_spec(batch, spec, what: str):
    got, want = spec_of(batch), spec_of(spec)
    if jax.tree.structure(got) != jax.tree.structure(want):
        raise ValueError(f"{what} has the structure {jax.tree.structure(got)}, but batch_spec says "
                         f"{jax.tree.structure(want)}")
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        if (g.shape, g.dtype) != (w.shape, w.dtype):
            raise ValueError(f"{what} has {jax.tree_util.keystr(path)} of shape {g.shape} {g.dtype}, "
                             f"but batch_spec says {w.shape} {w.dtype}")


@functools.lru_cache(maxsize=16)
def _guarded(step_fn, mesh, steps: int, state_sharding=None):
    """``step_fn`` jit'd over ``steps`` steps per call, each with its finiteness flags:
    ``(state, batches) -> (state, (metrics, flags))``, ``batches`` a tuple of ``steps`` batches and
    every metric and flag stacked over the steps. Several steps run as one ``lax.scan``: a call's
    host work (dispatching a state of hundreds of leaves, moving the batch) is paid once per call,
    which on a small model and a 2-core CPU is a fifth of a step. Data-parallel over ``mesh`` when
    given (state replicated, or laid out by ``state_sharding``: a hashable ``(treedef, leaf
    shardings)``; each batch split over ``data``); cached, so that runs of the same step function
    (a resumed run, a second fit in one process) reuse one compiled program."""

    def one(state, batch):
        state, metrics = step_fn(state, batch)
        return state, (metrics, _finite_flags(metrics["loss"], state))

    def guarded(state, batches):
        if steps == 1:  # no scan: the program of a single step, as it always was
            state, out = one(state, batches[0])
            return state, jax.tree.map(lambda x: x[None], out)
        return jax.lax.scan(one, state, jax.tree.map(lambda *xs: jnp.stack(xs), *batches))

    if mesh is None:
        return jax.jit(guarded, donate_argnums=0)
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    if state_sharding is not None:
        treedef, leaves = state_sharding
        state_out = jax.tree.unflatten(treedef, leaves)
        return jax.jit(guarded, donate_argnums=0, in_shardings=(state_out, data), out_shardings=(state_out, rep))
    return jax.jit(guarded, donate_argnums=0, in_shardings=(rep, data), out_shardings=rep)


@dataclasses.dataclass(frozen=True)
class _Loop:
    """One run of ``fit``: placement on the mesh, the step loop, the checks before each save."""

    step_fn: Callable
    batch_fn: Callable
    num_steps: int
    checkpoint_every: int
    stop_after: int | None
    run: dict
    desc: str
    progress: bool
    mesh: Any = None
    steps_per_call: int = 1
    batch_spec: Any = None
    state_rules: Any = None
    layouts: dict = dataclasses.field(default_factory=dict, compare=False)

    def shardings(self, state):
        """The state's shardings on the mesh: replicated, or by ``state_rules`` (worked out once per
        state structure and shapes, so that the table's warnings are shown once per run)."""
        if self.state_rules is None:
            return jax.tree.map(lambda _: parallel.replicated(self.mesh), state)
        key = (jax.tree.structure(state), tuple(np.shape(x) for x in jax.tree.leaves(state)))
        if key not in self.layouts:
            self.layouts[key] = self._rule_shardings(state)
        return self.layouts[key]

    def _rule_shardings(self, state):
        with warnings.catch_warnings():
            # Once per placement is enough: the table's own warning names each dimension left whole.
            warnings.simplefilter("once")
            specs = self.state_rules.state_specs(state, self.mesh)
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs, is_leaf=lambda x: isinstance(x, P))

    def place(self, state):
        """``state`` on the mesh (a global array in every process), replicated or by ``state_rules``."""
        return state if self.mesh is None else jax.device_put(state, self.shardings(state))

    def abstract(self, state):
        """The restore target: shapes, dtypes and (with a mesh) the state's shardings."""
        if self.mesh is None:
            return state
        # eval_shape: a concrete state's Python scalars (TrainState.create's step) get JAX's dtype.
        shapes = jax.eval_shape(lambda: state)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.shardings(shapes))

    def state_sharding(self, state):
        """``_guarded``'s hashable key of the state's layout (None: replicated)."""
        if self.mesh is None or self.state_rules is None:
            return None
        leaves, treedef = jax.tree.flatten(self.shardings(state))
        return treedef, tuple(leaves)

    def batch(self, i):
        batch = self.batch_fn(i)
        return batch if self.mesh is None else parallel.global_batch(batch, self.mesh)

    def abstract_batch(self):
        """``batch_spec`` as the step sees a batch: with a mesh, split over ``data`` (the
        sharding is part of the compiled program's key)."""
        return spec_of(self.batch_spec, None if self.mesh is None else parallel.data_sharding(self.mesh))

    def first_batches(self, step, state, indices) -> tuple:
        """The first call's batches; with a ``batch_spec``, built in a thread while ``step``
        compiles from the spec (the compiled program is in jit's cache for the first call)."""
        if self.batch_spec is None or not indices:
            return tuple(self.batch(j) for j in indices)
        what = f"{self.desc}: the batch of step {indices[0]}"
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fit-batches") as ex:
            future = ex.submit(lambda: tuple(self.batch(j) for j in indices))
            try:
                step.lower(state, (self.abstract_batch(),) * len(indices)).compile()
            except Exception:
                # A spec that is not the batches' makes tracing fail obscurely: name the mismatch.
                _check_spec(future.result()[0], self.batch_spec, what)
                raise
            batches = future.result()
        _check_spec(batches[0], self.batch_spec, what)
        return batches

    def train(self, state, manager) -> FitResult:
        start = int(parallel.to_host(state.step))
        if start > self.num_steps:
            raise ValueError(f"{self.desc}: the state is at step {start}, past num_steps={self.num_steps}")
        end = self.num_steps if self.stop_after is None else min(self.num_steps, start + self.stop_after)
        k = steps_per_call_for(self.steps_per_call, self.checkpoint_every, start, end)
        layout = self.state_sharding(state)
        # Replicated: the three-argument key, so the program is the one a caller looks up the same way.
        step = _guarded(self.step_fn, self.mesh, k) if layout is None else _guarded(self.step_fn, self.mesh, k, layout)
        history, last_saved = [], start if manager is not None and start > 0 else None
        names = _flag_names(state)  # read before the loop: the loop donates each state's buffers

        def check(first, flags):
            for row, step_flags in enumerate(np.asarray(parallel.to_host(flags))):
                bad = _first_bad(step_flags, names)
                if bad is not None:
                    where = f"; the last checkpoint is step {last_saved}" if last_saved else ""
                    raise FloatingPointError(f"{self.desc}: {bad} became non-finite at step "
                                             f"{first + row + 1}; stopped before saving it{where}")

        pending = None  # (first step, flags) of the previous call, read once the next is dispatched
        with tqdm(total=self.num_steps, initial=start, desc=self.desc, disable=not self.progress,
                  dynamic_ncols=True) as bar:
            prefetched = self.first_batches(step, state, tuple(range(start, min(start + k, end))))
            for i in range(start, end, k):
                batches = prefetched if i == start else tuple(self.batch(j) for j in range(i, i + k))
                state, (metrics, flags) = step(state, batches)
                prefetched = None
                if pending is not None:
                    check(*pending)
                done, pending = i + k, (i, flags)
                history.append(metrics)
                if done // 50 > i // 50 or done == end:
                    bar.set_postfix(loss=f"{float(parallel.to_host(metrics['loss'])[-1]):.4f}")
                bar.update(k)
                if manager is not None and (done % self.checkpoint_every == 0 or done == end):
                    check(*pending)
                    pending = None
                    manager.save(done, args=_save_args(state, self.run))
                    last_saved = done
        if pending is not None:
            check(*pending)
        history = parallel.to_host(history)
        metrics = {name: np.concatenate([np.asarray(m[name]) for m in history])
                   for name in (history[0] if history else ())}
        losses = metrics.get("loss", np.zeros((0,), np.float32)).astype(np.float32)
        return FitResult(state, losses, start, metrics)
