"""Concept interventions as pure builders of edit dicts (paper §3.2.3).

Each builder returns ``{site: edit}`` to pass as ``model.apply(..., edits=...)``; the arrays in it
(direction, alpha, mask) are pytree leaves, so ``jax.vmap`` over alpha or over a stack of concept
directions runs a whole dose-response sweep as one compiled call:

    sweep = jax.vmap(lambda a: model.apply(v, pixels, ids, mask,
                                           edits=direct("vision.layers.3.resid_post", d, a, scale))[0])
    outputs = sweep(jnp.linspace(0, 1, 11))

- ``direct`` (eq 5): ``r + alpha * scale * unit(Delta_c)``; ``alpha`` is relative to ``scale``, which
  should be the site's typical norm (``site_scale``), so the paper's alpha = 0.1 moves a
  representation by a tenth of its usual length whatever the model's width or layer.
- ``attention`` (eq 7) with ``concept_attention_mask``: ``M_c`` adds ``strength`` to the logits of
  keys that eq 1 marks as concept members (prototype similarity above tau), boosting (strength > 0)
  or suppressing (< 0) attention to them; added before the ``1/sqrt(d_k)`` scaling, as written.
- ``combine``: one dict holding several interventions (eq 5 + 7); edits at one site apply in order.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from mrepe_jax.edits import Add, AttnBias, along, as_tuple
from mrepe_jax.reading.prototypes import concept_members, fit_threshold, prototype, similarity

_LOGITS = "attn.logits"


def site_scale(reps) -> float:
    """Mean L2 norm of a site's representations ``[..., D]`` (rows and tokens alike): the unit in
    which ``direct``'s alpha is expressed."""
    reps = np.asarray(reps, np.float64)
    if reps.ndim < 2 or reps.shape[0] == 0:
        raise ValueError(f"site_scale needs representations [N, ..., D] with N >= 1, got {reps.shape}")
    norms = np.linalg.norm(reps, axis=-1)
    if not np.all(np.isfinite(norms)):
        raise ValueError("site_scale: representations hold non-finite values")
    return float(norms.mean())


def direct(site: str, direction, alpha=0.1, scale=1.0, where=None) -> dict:
    """Eq 5, ``I_direct(r) = r + alpha * Delta_c``, with ``Delta_c = scale * unit(direction)``.

    ``direction`` [D] (eq 6, e.g. ``reading.directions.direction_mean_diff``) is normalised here,
    so ``alpha`` means "a fraction of ``scale``" (pass ``scale=site_scale(reps)``: a fraction of
    the site's mean norm); its default 0.1 is the paper's. ``where``: the edit's position mask (see
    ``edits``). Every argument but ``site`` may be traced (vmapped over alpha or directions).
    """
    if site.endswith(_LOGITS):
        raise ValueError(f"direct (eq 5) edits a representation, not attention logits: {site!r}; "
                         f"use attention() at *.{_LOGITS}")
    d = jnp.asarray(direction)
    if d.ndim != 1:
        raise ValueError(f"direct: direction must be one vector [D], got shape {d.shape} for {site!r}")
    unit = d / jnp.maximum(jnp.linalg.norm(d), 1e-12)
    return {site: Add(unit * scale, alpha, where)}


def concept_attention_mask(token_reps, prototype, tau, strength):
    """Eq 7's ``M_c`` for ``*.attn.logits`` [batch, head, query, key]: ``strength`` on the keys whose
    representations ``token_reps`` [B, K, D] are eq 1 members of the concept (cosine similarity to
    ``prototype`` [D] above ``tau``), 0 on the others, for every head and query. Returned with named
    axes (``edits.along``), so it broadcasts to the site's shape."""
    token_reps = jnp.asarray(token_reps)
    if token_reps.ndim != 3 or jnp.shape(prototype) != token_reps.shape[-1:]:
        raise ValueError(f"concept_attention_mask needs token representations [B, K, D] and a "
                         f"prototype [D], got {token_reps.shape} and {jnp.shape(prototype)}")
    member = concept_members(token_reps, jnp.asarray(prototype), tau)
    return along(jnp.where(member, strength, 0.0).astype(token_reps.dtype), "batch", "key")


def concept_bias(key_means, positive, keys, unit: float) -> np.ndarray:
    """Eq 7's ``M_c`` values ``[n, T]`` for the inputs' key tokens ``keys`` [n, T, D]: ``unit`` on
    the eq 1 members of the prototype of the rows ``key_means[positive]`` (token-mean keys of a
    train split), with tau fitted between those rows and the rest (``fit_threshold``)."""
    proto = np.asarray(prototype(key_means[positive]))
    sims = np.asarray(similarity(key_means, proto))
    tau = fit_threshold(sims[positive], sims[~positive])
    return np.asarray(concept_attention_mask(keys, proto, tau, unit).value, np.float32)


def attention(site: str, mask, where=None) -> dict:
    """Eq 7 at an attention-logits site: ``{site: AttnBias(mask, where)}``."""
    if not site.endswith(_LOGITS):
        raise ValueError(f"attention (eq 7) edits *.{_LOGITS} sites, got {site!r}")
    return {site: AttnBias(mask, where)}


def combine(*interventions: Mapping) -> dict:
    """Several interventions as one edit dict (eq 5 + eq 7): edits at the same site apply in the
    order given."""
    out: dict = {}
    for edits in interventions:
        for site, edit in edits.items():
            out[site] = as_tuple(out[site]) + as_tuple(edit) if site in out else edit
    return out
