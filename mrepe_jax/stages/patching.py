"""The causal stage (eq 2): exact and attribution patching of contrast pairs, for any CLIP-like
model. A *contrast* is a set of pairs of one tower's inputs that differ in one concept; the metric
is the zero-shot logit difference between the two values' class prompts (``prompt_logit_diff``).
Per contrast: exact effects over layers x positions of ``resid_pre`` (and layers x heads of
``attn.z`` when asked), their attribution approximation, Spearman between the two, the top cell
with a bootstrap CI, and heatmaps in the workdir.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from mrepe_jax.models.layers import normalize
from mrepe_jax.reading.bootstrap import bootstrap_ci
from mrepe_jax.reading.causal import attribution_effect, causal_effect
from mrepe_jax.report.plots import heatmap


@dataclasses.dataclass(frozen=True)
class Contrast:
    """``P`` pairs of one tower's inputs (``clean`` vs ``corrupt``: pixels, waveforms or token ids)
    differing in one concept family; ``clean_values`` / ``corrupt_values`` ``[P]`` are each side's
    value index; text pairs carry each side's attention mask (they may differ in length) and may
    name each position (``position_labels``, e.g. the first clean caption's tokens) for the plots."""

    clean: Any
    corrupt: Any
    clean_values: np.ndarray
    corrupt_values: np.ndarray
    clean_mask: Any = None
    corrupt_mask: Any = None
    position_labels: tuple[str, ...] | None = None

    def __post_init__(self):
        n = {len(self.clean), len(self.corrupt), len(self.clean_values), len(self.corrupt_values)}
        if len(n) != 1 or 0 in n:
            raise ValueError(f"a contrast needs the same non-zero number of clean and corrupt inputs "
                             f"and values; got {len(self.clean)}, {len(self.corrupt)}, "
                             f"{len(self.clean_values)}, {len(self.corrupt_values)}")
        if (self.clean_mask is None) != (self.corrupt_mask is None):
            raise ValueError("a contrast gives both attention masks or neither")


def spearman(a, b, atol: float = 0.0) -> float:
    """Rank correlation with average ranks for ties (padding cells tie at exactly zero).

    With ``atol``, both maps are first rounded to multiples of it: cells that differ only by float
    noise (a patch with no effect gives +-1e-9) then tie instead of being ranked by rounding error,
    which would make the figure change with the device count or the summation order.
    """
    def quantize(x):
        x = np.ravel(np.asarray(x, np.float64))
        return np.round(x / atol) if atol > 0 else x

    return float(scipy.stats.spearmanr(quantize(a), quantize(b)).statistic)


def _logit_diff(diff, e):
    return jnp.sum(normalize(e) * diff, axis=-1)


def prompt_logit_diff(prompts: np.ndarray, pos_values, neg_values) -> jax.tree_util.Partial:
    """Per-example metric: cosine to the positive value's prompt minus to the negative's
    (``prompts [K, D]``, unit rows). A ``Partial`` carrying the prompt differences as an array, so
    every family's metric is an argument of the same compiled sweep (``reading.causal.as_metric``)."""
    diff = jnp.asarray(prompts[np.asarray(pos_values)] - prompts[np.asarray(neg_values)])
    return jax.tree_util.Partial(_logit_diff, diff)


def prompt_metric(prompts: np.ndarray, contrast: Contrast) -> jax.tree_util.Partial:
    """``prompt_logit_diff`` between each pair's clean and corrupt value: the zero-shot metric."""
    return prompt_logit_diff(prompts, contrast.clean_values, contrast.corrupt_values)


def patching(model, params, tower: str, name: str, contrast: Contrast, metric, workdir: Path, *,
             heads: bool = False, seed: int = 0, n_resamples: int = 1000, mesh=None,
             layers=None) -> dict:
    """Exact vs attribution patching of one contrast (eq 2) under ``metric`` (a per-pair
    ``Partial``, e.g. ``prompt_metric``) at ``layers`` (default: every layer; a hierarchical
    tower's must be blocks of one stage). Writes ``patching_{tower}_{name}_layer_position.png``
    (and ``..._layer_head.png`` with ``heads``)."""
    variables = {"params": params}
    kw: dict = {"mesh": mesh, "layers": layers}
    if contrast.clean_mask is not None:
        kw["text_mask"] = (contrast.clean_mask, contrast.corrupt_mask)
    exact = causal_effect(model, variables, tower, contrast.clean, contrast.corrupt, metric, **kw)
    attrib = attribution_effect(model, variables, tower, contrast.clean, contrast.corrupt, metric, **kw)
    e, a = np.asarray(exact.effects), np.asarray(attrib.effects)
    top = np.unravel_index(np.argmax(np.abs(e)), e.shape)
    est, lo, hi = bootstrap_ci(exact.per_example[:, top[0], top[1]], key=jax.random.key(seed),
                               n_resamples=n_resamples)
    # Float noise of an effect is that of the metric values it is a difference of.
    noise = 1e-6 * float(np.abs(np.concatenate([exact.base, exact.target])).max())
    out = {
        "spearman_exact_vs_attribution": spearman(e, a, atol=noise),
        "total_effect": float(exact.total_effect),
        "num_pairs": len(contrast.clean_values),
        "top_cell": {"layer": int(exact.layers[top[0]]), "position": int(exact.positions[top[1]]),
                     "effect": float(est), "ci95": [float(lo), float(hi)]},
    }
    stem = f"{tower}_{name}"
    # Every position is swept (one compiled program for any caption length); the plot stops at
    # the pairs' last real token, since padding after it cannot matter to the readout.
    shown = e
    if contrast.clean_mask is not None:
        length = int(max(np.asarray(contrast.clean_mask).sum(1).max(),
                         np.asarray(contrast.corrupt_mask).sum(1).max()))
        shown = e[:, :length]
    xticks = None
    if contrast.position_labels is not None:
        xticks = [f"{i} {t}" for i, t in enumerate(contrast.position_labels[:shown.shape[1]])]
    heatmap(shown, workdir / f"patching_{stem}_layer_position.png",
            title=f"{tower} / {name}: exact patching (resid_pre)",
            xlabel="position (token of the first clean input)" if xticks else "position",
            ylabel="layer", yticks=exact.layers, xticks=xticks)
    if heads:  # per-head sweeps cost heads x more
        per_head = causal_effect(model, variables, tower, contrast.clean, contrast.corrupt, metric,
                                 point="attn.z", heads=True, **kw)
        heatmap(np.asarray(per_head.effects).sum(1), workdir / f"patching_{stem}_layer_head.png",
                title=f"{tower} / {name}: attn.z patching, summed over positions",
                xlabel="head", ylabel="layer", yticks=per_head.layers)
    return out
