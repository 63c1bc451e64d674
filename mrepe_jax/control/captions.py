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

import dataclasses
import functools
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.edits import Add, Replace, along
from mrepe_jax.models.blip2 import QueriedLanguageModel, default_prompt
from mrepe_jax.models.blip2 import model as blip2


@dataclasses.dataclass(frozen=True)
class AddAt:
    """Eq 5 with the step already scaled: ``{site: Add(p["delta"], p["alpha"])}`` (every token).
    A frozen dataclass, so equal instances are one static argument: one compiled program across
    calls (a new ``functools.partial`` per call would compile again)."""

    site: str

    def __call__(self, p):
        return {self.site: Add(p["delta"], p["alpha"])}


@dataclasses.dataclass(frozen=True)
class ReplaceAt:
    """Activation patching toward a value: ``{site: Replace(p["value"])}`` for every example, its
    axes named by ``axes`` (e.g. ``("token", "feature")`` for a class's mean query states
    ``[Nq, D]``; None: a scalar or a feature vector)."""

    site: str
    axes: tuple[str, ...] | None = None

    def __call__(self, p):
        value = p["value"] if self.axes is None else along(p["value"], *self.axes)
        return {self.site: Replace(value)}


@dataclasses.dataclass(frozen=True)
class PatchPromptEnd:
    """Activation patching at an ``lm`` site's last prompt token, at the prompt pass only
    (``PREFILL``: ``steered_captions`` passes these edits as ``prefill_edits``): ``{site:
    Replace(p["value"] [D], where=the last of the prompt's ``length`` tokens)}``. The caption's
    tokens read the patched state through the KV cache."""

    site: str
    length: int

    PREFILL: ClassVar[bool] = True

    def __call__(self, p):
        return {self.site: Replace(p["value"], along(np.arange(self.length) == self.length - 1, "token"))}


@functools.partial(jax.jit, static_argnames=("model", "edits_fn", "max_new_tokens"))
def _steered(model, params, source, interventions, *, edits_fn, max_new_tokens):
    ids = jnp.asarray(default_prompt(model.config, source.shape[0]))
    mask = jnp.ones(ids.shape, jnp.int32)
    prefill = getattr(edits_fn, "PREFILL", False)

    def one(p):
        edits = edits_fn(p)
        return blip2.decode(model, params, source, ids, mask, edits=None if prefill else edits,
                            prefill_edits=edits if prefill else None, max_new_tokens=max_new_tokens)

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
    every decoding step, or at the prompt pass only when ``edits_fn.PREFILL`` is true
    (``PatchPromptEnd``). Interventions run ``chunk`` at a time (the last chunk, or a smaller P,
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
