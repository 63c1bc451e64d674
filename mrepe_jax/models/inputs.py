"""Validation of a tower's inputs at the model's edge, before any arithmetic sees them.

Shapes are static, so shape checks (empty batch, mask shape) run under ``jit`` too. Values can
only be read when concrete: a plain ``model.apply`` checks that token ids are in the vocabulary
and that pixels / waveforms are finite; under ``jit``/``vmap`` the values are tracers and pass,
and the aggregating stages (statistics, training, metrics) refuse the non-finite results instead.
Out-of-range ids map to NaN under ``jit`` (``safe_ids``), never to another token.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_batch(x, what: str, tower: str) -> None:
    """A non-empty batch: ``x.shape[0] > 0``."""
    if np.ndim(x) == 0 or np.shape(x)[0] == 0:
        raise ValueError(f"the {tower} tower got an empty batch: {what} of shape {tuple(np.shape(x))}")


def check_finite(x, what: str, tower: str) -> None:
    """Concrete floating inputs hold no NaN or inf."""
    if not is_concrete(x):
        return
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        raise ValueError(f"{what} given to the {tower} tower hold {len(bad)} non-finite values "
                         f"(NaN or inf), the first at index {tuple(int(i) for i in bad[0])} of shape "
                         f"{a.shape}")


def check_ids(ids, vocab_size: int, tower: str) -> None:
    """Integer ids, and when concrete, every id in ``[0, vocab_size)``."""
    check_batch(ids, "input_ids", tower)
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise ValueError(f"input_ids given to the {tower} tower must be integers, got dtype "
                         f"{jnp.result_type(ids)}")
    if not is_concrete(ids):
        return
    a = np.asarray(ids)
    bad = np.argwhere((a < 0) | (a >= vocab_size))
    if len(bad):
        i = tuple(int(j) for j in bad[0])
        raise ValueError(f"input_ids given to the {tower} tower hold {len(bad)} ids outside the "
                         f"vocabulary [0, {vocab_size}), the first {int(a[i])} at index {i}")


def safe_ids(ids, vocab_size: int):
    """Ids with every out-of-range one (negative included) moved past the table, so that a lookup
    under ``jit`` gives NaN (which aggregating stages refuse) instead of wrapping to a real token."""
    return jnp.where((ids >= 0) & (ids < vocab_size), ids, vocab_size)


def check_mask(attention_mask, input_ids, tower: str) -> None:
    """A ``[batch, tokens]`` padding mask of the ids' shape."""
    if np.shape(attention_mask) != np.shape(input_ids):
        raise ValueError(f"attention_mask of shape {tuple(np.shape(attention_mask))} does not match "
                         f"input_ids of shape {tuple(np.shape(input_ids))} in the {tower} tower")
