"""Cross-modal alignment on ToyWorld (paper §3.2.2, Table 2): maps phi_{i->j} (eq 4) trained with
InfoNCE (eq 3) on paired representations, scored by CMC (eq 8), and concepts carried across.

Paired data: one ToyWorld sample rendered in two modalities is a pair of "semantically
equivalent inputs" (eq 8's D); maps are fitted on the train split, scored on the test split.
Seeds vary everything fitted here (the train subset, initialisation, anchors, batch order); the
CLIP is the one trained model.

- CMC, Table 2: ``f`` is the zero-shot output distribution over each family's values (softmax at
  the model's ``logit_scale``), ``sim = 1 - JSD`` (bits), averaged over families and test pairs.
  *Baseline*: ``f(x_i)`` vs ``f(x_j)``, the model as trained. *MRepE*: the map is in modality
  i's path between its embedding and the zero-shot head, ``f(phi_{i->j}(r_i))`` vs ``f(x_j)``,
  with ``r_i`` read at ``{i}.proj``.
- Transfer: eq 6 directions (value vs rest) found at ``{i}.pooled`` (before the projection: not
  a shared space) carried to ``{j}.pooled`` through maps fitted there, then used in j to read
  (held-out AUROC) and to steer (``Add`` at ``{j}.pooled``, zero-shot prediction moves to the
  value), against j's own direction (ceiling), the unmapped direction, and a random one (floor).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.align.train import MapTrainConfig, train_maps
from mrepe_jax.align.transfer import Space, steered_predictions, transfer_scores
from mrepe_jax.report.plots import learning_curves
from mrepe_jax.stages.alignment import cmc_row
from mrepe_jax.stages.seeds import train_subsets

#: (i, j): phi_{i->j} maps modality i into modality j, and Table 2's row name.
PAIRS = {("text", "vision"): "Text-Image", ("text", "audio"): "Text-Audio",
         ("vision", "audio"): "Image-Audio"}
MAP_KINDS = ("mrepe", "linear", "procrustes")


def map_config(cfg: ml_collections.ConfigDict, **overrides) -> MapTrainConfig:
    return MapTrainConfig(**{**cfg.map.to_dict(), **overrides})


def fit_pair_maps(mcfg: MapTrainConfig, train: dict, point: str, subsets, seeds, checkpoints: Path,
                  mesh, provenance: dict, progress: bool) -> dict:
    """``{(i, j): [map per seed]}``: every pair x seed stacked into one ``train_maps`` call."""
    jobs = [(pair, k) for pair in PAIRS for k in range(len(seeds))]
    src = np.stack([train[i][f"{i}.{point}"][subsets[k]] for (i, _), k in jobs])
    tgt = np.stack([train[j][f"{j}.{point}"][subsets[k]] for (_, j), k in jobs])
    name = f"{point}_{mcfg.kind}" + (f"_{mcfg.anchors}" if mcfg.kind == "mrepe" else "")
    fitted = train_maps(mcfg, src, tgt, seeds=[seeds[k] for _, k in jobs],
                        source_site=[f"{i}.{point}" for (i, _), _ in jobs],
                        target_site=[f"{j}.{point}" for (_, j), _ in jobs],
                        checkpoint_dir=checkpoints / name.replace("+", "_"), mesh=mesh,
                        provenance=provenance, progress=progress)
    out: dict = {pair: [] for pair in PAIRS}
    for (pair, _), m in zip(jobs, fitted):
        out[pair].append(m)
    return out


def cmc_table(test: dict, prompts: dict, scale: float, maps: dict, key) -> dict:
    """``stages.alignment.cmc_row`` of every pair of towers (Table 2)."""
    return {name: cmc_row(test[i][f"{i}.proj"], test[j][f"{j}.proj"],
                          {kind: ms[(i, j)] for kind, ms in maps.items()}, prompts, scale, key)
            for (i, j), name in PAIRS.items()}


def transfer_table(model, params, world, train: dict, test: dict, labels: dict, prompts: dict,
                   maps: dict, seeds, alphas, num_steer: int) -> dict:
    """``{pair: {method: {"auroc": [...], "success": {alpha: [...]}}}}`` (one entry per seed for
    fitted methods, one for deterministic ones): ``align.transfer.transfer_scores`` between the
    towers' ``pooled`` sites (see the module docstring). Steering runs at each of ``alphas``
    (units of the site's mean norm): one alpha can saturate every method at 0 or 1."""
    variables = {"params": params}

    def space(tower: str) -> Space:
        site = f"{tower}.pooled"
        steer_x = test[tower][site][:num_steer]

        def steer(family, deltas, alpha):
            return steered_predictions(model, variables, tower, steer_x, deltas, alpha, prompts[family])

        return Space("toyworld-clip", site, train[tower][site], test[tower][site], steer)

    return {name: transfer_scores(space(i), space(j), {kind: ms[(i, j)] for kind, ms in maps.items()},
                                  world.families, labels, seeds, alphas, num_steer)
            for (i, j), name in PAIRS.items()}


def run(model, params, world, reps: dict, labels: dict, prompts: dict, scale: float,
        cfg: ml_collections.ConfigDict, workdir: Path, mesh, provenance: dict,
        progress: bool = True) -> dict:
    """The alignment stage: maps, Table 2 (+ baselines and anchor ablation), transfer table,
    learning curves and the MRepE map bundles in ``workdir``."""
    t0 = time.perf_counter()
    seeds = list(cfg.seeds)
    subsets = train_subsets(len(labels["train"][next(iter(world.families))]), cfg.train_fraction, seeds,
                            "align.train_fraction")
    train, test = reps["train"], reps["test"]
    checkpoints = workdir / "checkpoints" / "maps"
    curves, maps = {}, {"proj": {}, "pooled": {}}
    variants = [("proj", kind, None) for kind in MAP_KINDS]
    variants += [("proj", "mrepe", a) for a in cfg.ablation_anchors]
    variants += [("pooled", kind, None) for kind in MAP_KINDS]
    fit_seconds = {}
    for point, kind, anchors in variants:
        mcfg = map_config(cfg, kind=kind, **({"anchors": anchors} if anchors else {}))
        t_fit = time.perf_counter()
        fitted = fit_pair_maps(mcfg, train, point, subsets, seeds, checkpoints, mesh, provenance, progress)
        fit_seconds[(point, kind, anchors)] = time.perf_counter() - t_fit
        label = kind if anchors is None else f"anchors_{anchors}"
        maps[point][label] = fitted
        if kind != "procrustes" and all(m.info["losses"] for ms in fitted.values() for m in ms):
            curves[f"{point} {label}"] = np.mean([m.info["losses"] for ms in fitted.values() for m in ms], 0)
    learning_curves(curves, workdir / "align_learning_curves.png",
                    title="alignment maps: InfoNCE loss (mean over pairs and seeds)")
    for (i, j), ms in maps["proj"]["mrepe"].items():
        for seed, m in zip(seeds, ms):
            if parallel.is_primary():
                m.save(workdir / "maps" / f"{i}_to_{j}_proj_seed{seed}")
    key = jax.random.key(cfg.seeds[0])
    out = {
        "cmc": cmc_table(test, prompts, scale, maps["proj"], key),
        "transfer": transfer_table(model, params, world, train, test, labels, prompts,
                                   maps["pooled"], seeds, cfg.steer_alphas, cfg.num_steer),
        "seeds": seeds,
        "steer_alphas": list(cfg.steer_alphas),
        # Without MapTrainConfig's seed: each map's seed is one of "seeds".
        "map_config": {k: v for k, v in map_config(cfg).__dict__.items() if k != "seed"},
        # Table 5: the MRepE maps' fit (every pair and seed, one stacked program); "restored"
        # when a previous run's checkpoints made it a load instead of a fit.
        "map_fit": {"seconds": round(fit_seconds[("proj", "mrepe", None)], 2),
                    "restored": any(m.info.get("resumed_from", 0) > 0
                                    for ms in maps["proj"]["mrepe"].values() for m in ms)},
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
