"""Evaluating interventions (Table 3): zero-shot predictions under many interventions in one
compiled call, the success rate of a steering target, and the collateral damage beside it.

    edits_fn = DirectEdits("vision.layers.1.resid_post")   # eq 5 from each intervention's arrays
    interventions = {"delta": jnp.stack([d] * 5), "alpha": jnp.linspace(0, 1, 5),
                     "scale": jnp.full(5, scale)}
    preds = steered_predictions(model, variables, "vision", pixels, None, edits_fn,
                                interventions, prompts)          # {family: [5, N]}
    success_rate(preds["emblem"][k], labels["emblem"], target)  # per intervention k

Compile once: ``edits_fn`` (like ``model``) is a static argument of the compiled program, compared
by ``==``, so it must compare equal across calls for a later call to reuse the program. A frozen
dataclass defined in a module (``DirectEdits``, or one of your own in an imported file) or a
module-level function does; a ``functools.partial``, a lambda and a function defined in a notebook
cell compare by identity, so every new one (every call that builds a partial, every rerun of the
cell) compiles again, and JAX's cache keeps each one, with its model, until
``mrepe_jax.clear_caches()``. Anything that varies between calls (directions, alphas, scales,
masks) belongs in ``interventions``: arrays, traced.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.control.interventions import direct
from mrepe_jax.models.layers import normalize


@dataclasses.dataclass(frozen=True)
class DirectEdits:
    """``edits_fn`` for eq 5 at ``site``: ``p -> direct(site, p["delta"], p["alpha"], p["scale"])``
    (``scale`` optional, default 1), i.e. ``r + alpha * scale * unit(delta)``.

    A frozen dataclass, so equal instances are one static argument: every call with the same site
    reuses one compiled program, whatever its arrays, and so does a rerun notebook cell that builds
    a new instance.
    """

    site: str

    def __call__(self, p):
        return direct(self.site, p["delta"], p["alpha"], p.get("scale", 1.0))


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _predict(model, variables, tower, inputs, mask, edits_fn, interventions, prompts):
    def one(p):
        emb, _ = model.apply(variables, tower, inputs, mask, edits=edits_fn(p), method="encode")
        emb = normalize(emb)
        return {f: jnp.argmax(emb @ pr.T, axis=-1) for f, pr in prompts.items()}

    # lax.map, not vmap: memory stays that of one intervention's forward, in one program.
    return jax.lax.map(one, interventions)


def steered_predictions(model, variables, tower: str, inputs, mask, edits_fn: Callable,
                        interventions, prompts: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Zero-shot predictions ``{family: [P, N]}`` of ``tower`` on ``inputs`` [N, ...] (``mask``:
    the text tower's attention mask, else None) under each of P interventions.

    ``interventions`` is a pytree whose leaves have a leading axis P; ``edits_fn(p)`` builds one
    intervention's edit dict from one slice (``control.interventions`` builders). ``edits_fn`` is
    static and compared by ``==``: pass a frozen dataclass (``DirectEdits``) or a module-level
    function, so that every sweep over its arrays, in this call or a later one, reuses one compiled
    program. A ``functools.partial``, a lambda or a function defined in a rerun notebook cell is a
    new key each time it is built: each compiles again (module docstring). ``prompts``:
    ``{family: [V, D]}`` class-prompt embeddings (unit norm).
    """
    sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(interventions)}
    if len(sizes) != 1:
        raise ValueError(f"interventions must share one leading axis (P), got sizes {sorted(sizes)}")
    prompts = {f: jnp.asarray(p, jnp.float32) for f, p in prompts.items()}
    out = _predict(model, variables, tower, inputs, mask, edits_fn, interventions, prompts)
    return {f: np.asarray(p) for f, p in out.items()}


def success_rate(pred, true, target: int) -> float:
    """Table 3's success: among inputs whose true value is not ``target``, the fraction whose
    prediction moved to ``target``."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"success_rate needs predictions and labels [N], got {pred.shape} and {true.shape}")
    others = true != target
    if not others.any():
        raise ValueError(f"success_rate: every input already has value {target}; nothing to steer")
    return float(np.mean(pred[others] == target))


def collateral_accuracy(preds: Mapping[str, object], labels: Mapping[str, object],
                        steered_family: str) -> float:
    """Accuracy on every family but the steered one (mean over families): what an intervention
    left intact. A method that wins on success by wrecking the representation shows it here."""
    families = [f for f in preds if f != steered_family]
    if not families:
        raise ValueError(f"collateral_accuracy: no family besides {steered_family!r} to check")
    missing = [f for f in families if f not in labels]
    if missing:
        raise ValueError(f"collateral_accuracy: no labels for {missing}")
    return float(np.mean([np.mean(np.asarray(preds[f]) == np.asarray(labels[f])) for f in families]))
