"""Steering a captioner (eq 5 at a Q-Former or language-model site) and reading what it then says.

The generative counterpart of ``control.evaluate.steered_predictions``: where a CLIP tower is read
through its zero-shot head, a captioner (``blip2.QueriedLanguageModel``, e.g. the ToyWorld
captioner) is read through its greedy captions. P interventions run in one compiled program
(``lax.map`` over their arrays: the image features, the Q-Former and the cached decode of each),
and the captions come back as labels (``train.captioner.named_values``), so Table 3's
``success_rate`` and ``collateral_accuracy`` score them as they score zero-shot predictions.

    def edits_fn(p):                                   # p: one intervention's arrays (module level)
        return direct("qformer.layers.0.resid_post", p["direction"], p["alpha"], scale)

    ids = steered_captions(model, params, image_embeds, edits_fn,
                           {"direction": directions, "alpha": alphas}, max_new_tokens=15)  # [P, N, T]
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.blip2 import QueriedLanguageModel, default_prompt
from mrepe_jax.models.blip2 import model as blip2


@functools.partial(jax.jit, static_argnames=("model", "edits_fn", "max_new_tokens"))
def _steered(model, params, source, interventions, *, edits_fn, max_new_tokens):
    ids = jnp.asarray(default_prompt(model.config, source.shape[0]))
    mask = jnp.ones(ids.shape, jnp.int32)

    def one(p):
        return blip2.decode(model, params, source, ids, mask, edits=edits_fn(p),
                            max_new_tokens=max_new_tokens)

    # lax.map, not vmap: memory stays that of one intervention's decode, in one program.
    return jax.lax.map(one, interventions)


def steered_captions(model: QueriedLanguageModel, params, source, edits_fn: Callable, interventions,
                     max_new_tokens: int, chunk: int = 64) -> np.ndarray:
    """Greedy caption ids ``[P, N, max_new_tokens]`` of the ``N`` images in ``source`` (what the
    model's Q-Former reads: image states for the ToyWorld captioner, pixels for BLIP-2) under each
    of P interventions. ``interventions``: a pytree whose leaves have a leading axis P;
    ``edits_fn(p)`` builds one intervention's edit dict from one slice and is static: pass a
    module-level function or a frozen dataclass with ``__call__`` (equal instances hash equal),
    so that every call reuses one program; a fresh ``functools.partial`` per call compiles anew.
    Edits at ``qformer.*`` / ``vision.*`` sites change the image tokens; ``lm.*`` edits apply at
    every decoding step. Interventions run ``chunk`` at a time (the last chunk, or a smaller P,
    padded with copies of the first), so sweeps of any P share one compiled program."""
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(interventions)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"interventions must share one leading axis (P), got sizes {sorted(sizes, key=str)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    (count,) = sizes
    source = jnp.asarray(source)
    out = []
    for start in range(0, count, chunk):
        rows = np.arange(start, start + chunk)
        rows = np.where(rows < count, rows, 0)
        part = jax.tree.map(lambda a, r=rows: jnp.asarray(a)[r], interventions)
        ids = _steered(model, params, source, part, edits_fn=edits_fn, max_new_tokens=max_new_tokens)
        out.append(np.asarray(ids)[:count - start])
    return np.concatenate(out)
