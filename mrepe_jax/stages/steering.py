"""The steering stage (paper §3.2.3, Table 3) for any CLIP-like model: each value of a concept
family is a target; held-out inputs of other values are steered toward it at one site, and the
tower's zero-shot prediction among the family's prompts says whether they moved.

Methods, each every target's in one compiled call (``control.evaluate.steered_predictions``):

- *None*: no intervention (how often inputs are predicted as the target anyway);
- *Direct* (eq 5): ``Add`` of ``alpha x scale x unit(Delta_c)`` on every token, ``Delta_c`` the eq 6
  mean difference (target vs the family's other values) and ``scale`` the site's mean norm;
- *AP*: the readout token (CLS / EOS: the one the tower pools) replaced at the site by the
  target's mean activation of that token (patching without a direction).

Success: among inputs whose true value is not the target, the share now predicted as the target
(``control.evaluate.success_rate``), averaged over targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mrepe_jax.control.evaluate import DirectEdits, steered_predictions, success_rate
from mrepe_jax.control.interventions import attention, combine, direct
from mrepe_jax.edits import Replace, along
from mrepe_jax.sites import layer_sites
from mrepe_jax.stages.reads import readout_mask

# The edit builders are frozen dataclasses, not functools.partials: equal instances are one static
# argument, so the other world's (or a later call's) sweep reuses the compiled program.


@dataclasses.dataclass(frozen=True)
class EditAP:
    """Activation patching at the readout token: ``Replace(p["mean"], where=p["where"])`` at
    ``site``, with ``p["mean"]`` the target's mean activation *of that token* and ``p["where"]``
    the inputs' readout positions ``[N, T]`` (``reads.readout_mask``). Writing a mean over every
    token there instead would hand the CLS / EOS token an average it never holds."""

    site: str

    def __call__(self, p):
        return {self.site: Replace(p["mean"], along(p["where"], "batch", "token"))}


@dataclasses.dataclass(frozen=True)
class EditEq5Eq7:
    """One intervention of the eq 5 / eq 7 family at ``site`` and its layer's ``logits``, from one
    intervention's arrays (``delta``, ``alpha``, ``scale``, and ``bias``: eq 7's ``M_c`` per input
    and key token). Methods differ only in their arrays (alpha 0 or a zero mask switch a part
    off), so every method and alpha shares one compiled program."""

    site: str
    logits: str

    def __call__(self, p):
        return combine(direct(self.site, p["delta"], p["alpha"], p["scale"]),
                       attention(self.logits, along(p["bias"], "batch", "key")))


def last_resid(model, tower: str) -> str:
    """The site the stage steers by default: the tower's last layer's (or block's) ``resid_post``."""
    return layer_sites(model.site_names(), tower, "resid_post")[-1]


def steering_sites(model, tower: str) -> tuple[str, str, str]:
    """``(resid_post, attn.logits, resid_pre)`` of the tower's last layer: where eq 5 adds, where
    eq 7 biases, and the keys eq 7 reads its concept members from."""
    known = model.site_names()
    return tuple(layer_sites(known, tower, p)[-1] for p in ("resid_post", "attn.logits", "resid_pre"))


def attention_unit(model, tower: str, width: int, strength: float) -> float:
    """The logit bias that shifts the softmax input by ``strength`` in a tower of ``width`` and
    its config's heads (eq 7 adds ``M_c`` before the ``1/sqrt(d_head)`` scaling)."""
    heads = getattr(model.config, f"{tower}_config").num_attention_heads
    return strength * np.sqrt(width / heads)


def steer(model, params, tower: str, inputs, mask, labels: np.ndarray, site: str,
          directions: np.ndarray, means: np.ndarray, scale: float, alphas, prompts: np.ndarray,
          names=None) -> dict:
    """Table 3's success rates of one tower and family.

    Args:
      inputs, mask: the held-out inputs ``[N, ...]`` and, for text, their attention mask.
      labels: their values ``[N]`` (``-1``: unlabelled, never counted).
      directions: ``[K, D]`` eq 6 directions at ``site`` (token means, train split).
      means: ``[K, D]`` each value's mean activation at ``site`` of the readout token
        (``reads.readout_reps``, train split): what AP writes there.
      scale: the site's mean norm; ``alphas``: eq 5 steps in its units.
      prompts: ``[K, D]`` unit-norm prompt embeddings of the family's values.
      names: the values' names, which key ``per_target`` (default: their indices).
    Returns ``{"none", "ap": success, "direct": {alpha: success}, "per_target": {...}}``.
    """
    labels = np.asarray(labels)
    k, alphas = len(directions), [float(a) for a in alphas]
    targets = [c for c in range(k) if np.any((labels >= 0) & (labels != c))]
    if not targets:
        raise ValueError(f"steering {tower}: no held-out input of a value other than the targets")
    variables, family = {"params": params}, {"f": prompts}
    eq5 = {"delta": np.repeat(directions[targets], len(alphas) + 1, axis=0).astype(np.float32),
           "alpha": np.tile(np.asarray([0.0] + alphas, np.float32), len(targets)),
           "scale": np.full((len(alphas) + 1) * len(targets), scale, np.float32)}
    direct_preds = steered_predictions(model, variables, tower, inputs, mask, DirectEdits(site), eq5,
                                       family)["f"].reshape(len(targets), len(alphas) + 1, -1)
    where = readout_mask(model, params, tower, inputs, site).value
    ap = {"mean": means[targets].astype(np.float32), "where": np.stack([where] * len(targets))}
    ap_preds = steered_predictions(model, variables, tower, inputs, mask, EditAP(site), ap, family)["f"]
    keep = labels >= 0

    def success(pred, c):
        return success_rate(pred[keep], labels[keep], c)

    key = (lambda c: str(names[c])) if names is not None else int
    per_target = {key(c): {"none": success(direct_preds[i, 0], c), "ap": success(ap_preds[i], c),
                           "direct": {str(a): success(direct_preds[i, j + 1], c)
                                      for j, a in enumerate(alphas)}}
                  for i, c in enumerate(targets)}
    rows = list(per_target.values())
    return {"site": site, "alphas": alphas, "num_inputs": int(keep.sum()),
            "none": float(np.mean([r["none"] for r in rows])),
            "ap": float(np.mean([r["ap"] for r in rows])),
            "direct": {str(a): float(np.mean([r["direct"][str(a)] for r in rows])) for a in alphas},
            "per_target": per_target}
