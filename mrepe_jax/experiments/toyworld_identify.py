"""Representation identification on ToyWorld (paper §3.2.1, Table 1): prototypes (eq 1), mean-
difference directions (eq 6) and causal effects (eq 2), scored against the world's ground truth.

- Table 1 score: ``reading.prototypes.identification_score`` (held-out one-vs-rest AUROC of the
  prototype similarity, macro-averaged over a family's values, then over families).
  *Baseline* takes prototypes at the output embedding (``{tower}.proj``), as a user of the
  embedding API would. *MRepE* takes them at the site selected on the validation split among every
  layer's residual stream (token mean), ``pooled`` and ``proj``.
- Directions: per family and value, the eq 6 mean difference (value vs rest) on the train split;
  the held-out AUROC of the projection onto it, at the best site chosen on validation.
- Causal effects: contrast pairs differing in one family; metric = zero-shot logit difference
  between the two values' class prompts; exact patching and attribution patching over
  layers x positions of each tower's residual stream, and layers x heads of ``attn.z``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from mrepe_jax import parallel
from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.models.clip import normalize
from mrepe_jax.reading.activations import collect_activations, tower_apply
from mrepe_jax.reading.bootstrap import bootstrap_ci
from mrepe_jax.reading.causal import attribution_effect, causal_effect
from mrepe_jax.reading.directions import direction_mean_diff
from mrepe_jax.reading.prototypes import auroc, identification_score
from mrepe_jax.report.plots import heatmap
from mrepe_jax.train.zero_shot import prompt_embeddings

TOWERS = {"vision": ("image", None), "text": ("input_ids", "attention_mask"), "audio": ("audio", None)}


def candidate_sites(model, tower: str) -> tuple[str, ...]:
    n = model.tower_layers()[tower]
    return tuple(f"{tower}.layers.{i}.resid_post" for i in range(n)) + (f"{tower}.pooled", f"{tower}.proj")


def tower_reps(model, params, batch, tower: str, chunk: int = 256, mesh=None) -> dict[str, np.ndarray]:
    """``{site: [N, D]}`` at every candidate site (token mean over real tokens for residuals)."""
    input_key, mask_key = TOWERS[tower]
    keys = [input_key] + ([mask_key] if mask_key else [])
    n = len(batch[input_key])
    batches = ({k: batch[k][s:s + chunk] for k in keys} for s in range(0, n, chunk))
    return collect_activations(tower_apply(model, tower, input_key, mask_key), batches,
                               candidate_sites(model, tower), params={"params": params},
                               reduce="mean", mask_key=mask_key, mesh=mesh)


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


def direction_auroc(train_x, train_y, test_x, test_y, num_values: int) -> float:
    """Mean over values of the held-out AUROC of the projection onto eq 6's direction."""
    scores = []
    for c in range(num_values):
        d = direction_mean_diff(train_x[train_y == c], train_x[train_y != c])
        proj = test_x @ np.asarray(d)
        scores.append(float(auroc(proj[test_y == c], proj[test_y != c])))
    return float(np.mean(scores))


def split_reps(model, params, splits: dict[str, dict], mesh=None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{split: {tower: {site: [N, D]}}}``: every split encoded once, read by every stage. One
    chunk size for every split (the last chunk of each is padded), so each tower compiles once.

    In a multi-process run ``splits`` hold this process's rows (``parallel.process_rows``); the
    representations of all rows, in order, come back on every process."""
    chunk = min(256, *(len(b[TOWERS["vision"][0]]) for b in splits.values()))
    local = {s: {t: tower_reps(model, params, b, t, chunk, mesh) for t in TOWERS}
             for s, b in splits.items()}
    return parallel.gather_rows(local)


def identify(model, world: ToyWorld, all_reps: dict, labels: dict[str, dict]) -> dict:
    """Table 1 scores and direction AUROCs per tower and family, from ``split_reps`` output and
    each split's ``labels`` (``{split: {family: [N]}}``)."""
    out: dict = {"baseline": {}, "mrepe": {}, "mrepe_site": {}, "direction_auroc": {}, "direction_site": {}}
    for tower in TOWERS:
        reps = {s: r[tower] for s, r in all_reps.items()}
        for key in out:
            out[key][tower] = {}
        for family, values in world.families.items():
            k = len(values)
            lab = {s: np.asarray(split_labels[family]) for s, split_labels in labels.items()}

            def score(site, test_split):
                return identification_score(reps["train"][site], lab["train"], reps[test_split][site],
                                            lab[test_split], num_values=k).score

            sites = candidate_sites(model, tower)
            best = max(sites, key=lambda s: score(s, "validation"))
            out["baseline"][tower][family] = score(f"{tower}.proj", "test")
            out["mrepe"][tower][family] = score(best, "test")
            out["mrepe_site"][tower][family] = best

            def dir_score(site, test_split):
                return direction_auroc(reps["train"][site], lab["train"], reps[test_split][site],
                                       lab[test_split], k)

            best_dir = max(sites, key=lambda s: dir_score(s, "validation"))
            out["direction_auroc"][tower][family] = dir_score(best_dir, "test")
            out["direction_site"][tower][family] = best_dir
    return out


def _logit_diff(diff, e):
    return jnp.sum(normalize(e) * diff, axis=-1)


def prompt_logit_diff(prompts: np.ndarray, pos_values, neg_values) -> jax.tree_util.Partial:
    """Per-example metric: cosine to the positive value's prompt minus to the negative's. A
    ``Partial`` carrying the prompt differences as an array, so every family's metric is an
    argument of the same compiled sweep (``reading.causal.as_metric``)."""
    diff = jnp.asarray(prompts[np.asarray(pos_values)] - prompts[np.asarray(neg_values)])
    return jax.tree_util.Partial(_logit_diff, diff)


def causal_analysis(model, params, world: ToyWorld, num_pairs: int, workdir: Path, seed: int = 0,
                    towers=tuple(TOWERS), families=None, mesh=None, n_resamples: int = 1000) -> dict:
    """Exact vs attribution patching per tower and family; heatmaps into ``workdir``; the top
    cell's bootstrap CI from ``n_resamples`` resamples (the paper's 1,000)."""
    variables = {"params": params}
    prompts = prompt_embeddings(model, params, world)
    families = tuple(world.families) if families is None else tuple(families)
    for name, given, known in (("tower", towers, TOWERS), ("family", families, world.families)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown} for causal analysis; known: {list(known)}")
    out: dict = {}
    for tower in towers:
        input_key, mask_key = TOWERS[tower]
        out[tower] = {}
        for family in families:
            pairs = world.contrast_pairs(family, num_pairs, split="test", seed=seed)
            metric = prompt_logit_diff(prompts[family], pairs.pos_values, pairs.neg_values)
            kw = {}
            if mask_key:  # contrast captions can differ in length: give each run its own mask
                kw["text_mask"] = (pairs.pos[mask_key], pairs.neg[mask_key])
            kw["mesh"] = mesh
            exact = causal_effect(model, variables, tower, pairs.pos[input_key], pairs.neg[input_key],
                                  metric, **kw)
            attrib = attribution_effect(model, variables, tower, pairs.pos[input_key],
                                        pairs.neg[input_key], metric, **kw)
            e, a = np.asarray(exact.effects), np.asarray(attrib.effects)
            top = np.unravel_index(np.argmax(np.abs(e)), e.shape)
            est, lo, hi = bootstrap_ci(exact.per_example[:, top[0], top[1]], key=jax.random.key(seed),
                                       n_resamples=n_resamples)
            # Float noise of an effect is that of the metric values it is a difference of.
            noise = 1e-6 * float(np.abs(np.concatenate([exact.base, exact.target])).max())
            out[tower][family] = {
                "spearman_exact_vs_attribution": spearman(e, a, atol=noise),
                "total_effect": float(exact.total_effect),
                "top_cell": {"layer": int(exact.layers[top[0]]), "position": int(exact.positions[top[1]]),
                             "effect": float(est), "ci95": [float(lo), float(hi)]},
            }
            stem = f"{tower}_{family}"
            heatmap(e, workdir / f"patching_{stem}_layer_position.png",
                    title=f"{tower} / {family}: exact patching (resid_pre)", xlabel="position",
                    ylabel="layer", yticks=exact.layers)
            if tower == "vision":  # per-head sweeps cost heads x more; one tower shows the picture
                heads = causal_effect(model, variables, tower, pairs.pos[input_key],
                                      pairs.neg[input_key], metric, point="attn.z", heads=True, **kw)
                heatmap(np.asarray(heads.effects).sum(1), workdir / f"patching_{stem}_layer_head.png",
                        title=f"{tower} / {family}: attn.z patching, summed over positions",
                        xlabel="head", ylabel="layer", yticks=heads.layers)
    return out
