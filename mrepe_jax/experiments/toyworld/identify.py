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

import numpy as np
from tqdm.auto import tqdm

from mrepe_jax import parallel
from mrepe_jax.data.toyworld import ToyWorld
from mrepe_jax.stages import identification, patching
from mrepe_jax.stages.identification import candidate_sites
from mrepe_jax.stages.reads import mean_reps
from mrepe_jax.train.zero_shot import prompt_embeddings

TOWERS = {"vision": ("image", None), "text": ("input_ids", "attention_mask"), "audio": ("audio", None)}


def tower_reps(model, params, batch, tower: str, chunk: int = 256, mesh=None) -> dict[str, np.ndarray]:
    """``{site: [N, D]}`` at every candidate site (token mean over real tokens for residuals)."""
    return mean_reps(model, params, tower, TOWERS[tower], batch, candidate_sites(model, tower), chunk,
                     mesh)


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
    """Table 1 scores and direction AUROCs per tower and family (``stages.identification``), from
    ``split_reps`` output and each split's ``labels`` (``{split: {family: [N]}}``); and the test
    AUROC at every candidate site, in layer order (``direction_auroc_by_site``: eq 6,
    ``prototype_auroc_by_site``: eq 1; ``{tower: {family: {site: AUROC}}}``)."""
    out: dict = {"baseline": {}, "mrepe": {}, "mrepe_site": {}, "direction_auroc": {}, "direction_site": {},
                 "direction_auroc_by_site": {}, "prototype_auroc_by_site": {}}
    for tower in TOWERS:
        reps = {s: r[tower] for s, r in all_reps.items()}
        for key in out:
            out[key][tower] = {}
        for family, values in world.families.items():
            lab = {s: np.asarray(split_labels[family]) for s, split_labels in labels.items()}
            sums = identification.accumulate(None, reps["train"], lab["train"], len(values))
            readout = identification.Readout.from_sums(sums, family)
            held_out = ("validation", "test")
            scores = {s: readout.scores(reps[s]) for s in held_out}
            sites = candidate_sites(model, tower)
            row = identification.table1(scores, {s: lab[s] for s in held_out}, sites, f"{tower}.proj")
            for key, value in row.items():
                out[key][tower][family] = value
            by_site = identification.site_aurocs(scores["test"], lab["test"], sites)
            out["direction_auroc_by_site"][tower][family] = by_site["direction"]
            out["prototype_auroc_by_site"][tower][family] = by_site["prototype"]
    return out


def causal_analysis(model, params, world: ToyWorld, num_pairs: int, workdir: Path, seed: int = 0,
                    towers=tuple(TOWERS), families=None, mesh=None, n_resamples: int = 1000,
                    progress: bool = False) -> dict:
    """``stages.patching`` (eq 2, exact and attribution) of ``num_pairs`` test-split contrast pairs
    per tower and family; the vision tower also per head. ``seed`` draws the contrast pairs and the
    top cell's bootstrap CI (the pipeline passes the run seed's, ``seeds``);
    ``progress``: a transient bar over the (tower, family) sweeps."""
    prompts = prompt_embeddings(model, params, world)
    families = tuple(world.families) if families is None else tuple(families)
    for name, given, known in (("tower", towers, TOWERS), ("family", families, world.families)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown} for causal analysis; known: {list(known)}")
    out: dict = {tower: {} for tower in towers}
    sweeps = [(tower, family) for tower in towers for family in families]
    # leave=False: the pipeline's stage bar stays the one line left once the sweeps are done.
    for tower, family in tqdm(sweeps, desc="patching", unit="sweep", leave=False, disable=not progress,
                              dynamic_ncols=True):
        input_key, mask_key = TOWERS[tower]
        pairs = world.contrast_pairs(family, num_pairs, split="test", seed=seed)
        masks = (pairs.pos[mask_key], pairs.neg[mask_key]) if mask_key else (None, None)
        contrast = patching.Contrast(pairs.pos[input_key], pairs.neg[input_key],
                                     pairs.pos_values, pairs.neg_values, *masks)
        out[tower][family] = patching.patching(
            model, params, tower, family, contrast, patching.prompt_metric(prompts[family], contrast), workdir,
            heads=tower == "vision", seed=seed, n_resamples=n_resamples, mesh=mesh)
    return out
