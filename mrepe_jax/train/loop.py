"""The project's one training loop: jit'd steps, a deterministic batch stream, orbax checkpoints.

Every trained component (the ToyWorld CLIP, alignment maps, probes that need it) calls ``fit``
with its own ``step_fn`` instead of copying a loop. Batches are a pure function of the step
number, so a run killed after k steps and resumed sees exactly the batches an uninterrupted run
would, and ends with the same parameters.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.training.train_state import TrainState
from tqdm.auto import tqdm


@dataclasses.dataclass
class FitResult:
    state: TrainState
    losses: np.ndarray  # the loss of every step run in THIS call (not of restored steps)
    resumed_from: int  # 0 when training started fresh


def checkpoint_manager(directory: str | os.PathLike, keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """``state`` replaced by the latest checkpoint in ``manager``, or unchanged when there is none."""
    step = manager.latest_step()
    if step is None:
        return state
    return manager.restore(step, args=ocp.args.StandardRestore(state))


def fit(
    state: TrainState,
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    batch_fn: Callable[[int], Any],
    num_steps: int,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    stop_after: int | None = None,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Runs ``step_fn`` from ``state.step`` (or the latest checkpoint) up to ``num_steps``.

    ``step_fn(state, batch) -> (state, metrics)`` must return ``metrics["loss"]``; it is jit'd
    here. ``batch_fn(step)`` gives the batch of a step. ``stop_after`` ends the call early after
    that many steps (a checkpoint is written), which is how tests simulate a killed run.
    A non-finite loss stops training with an error naming the step instead of saving NaNs.
    """
    manager = checkpoint_manager(checkpoint_dir) if checkpoint_dir is not None else None
    if manager is not None:
        state = restore_latest(manager, state)
    start = int(state.step)
    end = num_steps if stop_after is None else min(num_steps, start + stop_after)
    step_fn = jax.jit(step_fn, donate_argnums=0)
    losses = []
    with tqdm(total=num_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for step in range(start, end):
            state, metrics = step_fn(state, batch_fn(step))
            done = step + 1
            if done % 50 == 0 or done == end:
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss} at step {done}; not saving it")
                bar.set_postfix(loss=f"{loss:.4f}")
            losses.append(metrics["loss"])
            bar.update(1)
            if manager is not None and (done % checkpoint_every == 0 or done == end):
                manager.save(done, args=ocp.args.StandardSave(state))
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    return FitResult(state, np.asarray(jax.device_get(losses), dtype=np.float32), start)
