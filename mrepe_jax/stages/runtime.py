"""What every experiment on a real checkpoint checks before it loads anything: the compute dtype
the config names, and that it runs in one process."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
