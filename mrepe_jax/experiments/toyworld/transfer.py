"""Transfer across architectures on ToyWorld: concepts carried between models, not modalities.

Three models read the same images: the tri-modal CLIP (``clip``), a second CLIP of another width
and depth trained on the same world (``clip_b``, ``config.transfer.clip``; its own checkpoint in
``workdir/checkpoints/toyclip_b``), and the captioner (``captioning``: its Q-Former's
mean query state, a generative model's space). For each ordered pair of ``PAIRS`` a map from the
source's space to the target's is fitted on the train split's paired reads (one image, two models)
-- linear and eq 4 trained with InfoNCE (eq 3), orthogonal Procrustes in closed form -- with the
alignment stage's map settings and seeds. ``align.transfer.transfer_scores`` then carries every
concept value's eq 6 direction through each map and scores it in the target: held-out AUROC
(reading) and steering success (eq 5 at the target's site: the zero-shot prediction of a CLIP,
the caption of the captioner), against the target's own direction (ceiling), the unmapped one
(only when the widths agree) and a random one (floor).

Sites: ``vision.pooled`` of each CLIP (before its projection: no shared space), the captioner's
``captioning.site``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import ml_collections
import numpy as np

from mrepe_jax import parallel
from mrepe_jax.align.train import train_maps
from mrepe_jax.align.transfer import Space, steered_predictions, transfer_scores
from mrepe_jax.experiments.toyworld import captioning
from mrepe_jax.experiments.toyworld.align import map_config
from mrepe_jax.experiments.toyworld.identify import tower_reps
from mrepe_jax.reading.bundles import params_hash
from mrepe_jax.stages.seeds import train_subsets
from mrepe_jax.train import captioner, toyclip, zero_shot

#: (source, target): the ordered pairs of the transferability table.
PAIRS = (("clip", "clip_b"), ("clip_b", "clip"), ("clip", "captioner"), ("captioner", "clip"))
SITE = "vision.pooled"


def second_clip(world, train_cfg: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict,
                workdir: Path, progress: bool, mesh):
    """``(model, params, info)``: the CLIP of ``train_cfg`` with ``overrides`` (its width, depth,
    steps), trained or restored from ``workdir/checkpoints/toyclip_b``."""
    cfg = ml_collections.ConfigDict({**train_cfg.to_dict(), **overrides.to_dict()})
    t0 = time.perf_counter()
    model, fit = toyclip.train(world, cfg, Path(workdir) / "checkpoints" / "toyclip_b",
                               progress=progress, mesh=mesh)
    c = model.config.vision_config
    info = {"hidden_size": c.hidden_size, "num_layers": c.num_hidden_layers, "steps": int(fit.state.step),
            "steps_run": len(fit.losses), "seconds_this_run": round(time.perf_counter() - t0, 1)}
    return model, parallel.to_host(fit.state.params), info


def clip_reads(model, params, pixels: dict) -> dict:
    """``{split: [N, D]}``: a CLIP's ``vision.pooled`` on each split's images (every row, in each
    process: the reads are small, and a mesh would take them for this process's share)."""
    chunk = min(256, *(len(x) for x in pixels.values()))  # one chunk size: one compile
    return {s: tower_reps(model, params, {"image": x}, "vision", chunk)[SITE] for s, x in pixels.items()}


def clip_space(name: str, model, params, prompts: dict, reads: dict, num_steer: int) -> Space:
    """A CLIP's ``vision.pooled`` reads (``{"train", "test"}``); steering is read through its
    image zero-shot head (``prompts``: ``zero_shot.prompt_embeddings``)."""
    steer_x = reads["test"][:num_steer]

    def steer(family, deltas, alpha):
        return steered_predictions(model, {"params": params}, "vision", steer_x, deltas, alpha,
                                   prompts[family])

    return Space(name, SITE, reads["train"], reads["test"], steer)


def captioner_space(model, params, world, clip_model, clip_params, train_reads, test_pixels,
                    num_steer: int) -> Space:
    """The captioner's mean query state; steering is read from its greedy captions (a family's
    value is the one its caption names, -1 for none or several)."""
    embeds = captioner.vision_states(clip_model, clip_params, test_pixels)
    test_reads = captioning.query_reads(model, params, embeds)

    def steer(family, deltas, alpha):
        # transfer_scores pads every call to one count: one chunk of it is one program, unpadded.
        ids = captioning.steered_ids(model, params, world, embeds[:num_steer], deltas,
                                              np.full(len(deltas), alpha, np.float32), len(deltas))
        return captioner.named_values(world, ids)[family]

    return Space("captioner", captioning.site(model), train_reads, test_reads, steer)


def fit_maps(spaces: dict, align_cfg: ml_collections.ConfigDict, kinds, epochs: int, workdir: Path,
             mesh, progress: bool) -> dict:
    """``{(source, target): {kind: [map per seed]}}`` for ``PAIRS``, fitted on each seed's train
    subset (``align.seeds``, ``align.train_fraction``) with ``align.map``'s settings but
    ``epochs``. Pairs whose widths agree are stacked into one ``train_maps`` call per kind (one
    compiled program)."""
    seeds = list(align_cfg.seeds)
    subsets = train_subsets(len(spaces["clip"].train), align_cfg.train_fraction, seeds,
                            "align.train_fraction")
    groups = defaultdict(list)
    for pair in PAIRS:
        src, tgt = (spaces[m] for m in pair)
        groups[(src.dim, tgt.dim)] += [(pair, k) for k in range(len(seeds))]
    out: dict = {pair: {kind: [] for kind in kinds} for pair in PAIRS}
    for kind in kinds:
        mcfg = map_config(align_cfg, kind=kind, epochs=epochs)
        for (d_src, d_tgt), jobs in groups.items():
            fitted = train_maps(
                mcfg, np.stack([spaces[s].train[subsets[k]] for (s, _), k in jobs]),
                np.stack([spaces[t].train[subsets[k]] for (_, t), k in jobs]),
                seeds=[seeds[k] for _, k in jobs], source_site=[spaces[s].site for (s, _), _ in jobs],
                target_site=[spaces[t].site for (_, t), _ in jobs],
                checkpoint_dir=Path(workdir) / "checkpoints" / "architecture_maps" / f"{kind}_{d_src}to{d_tgt}",
                mesh=mesh, progress=progress,
                provenance={"model": ", ".join(sorted({f"{s} -> {t}" for (s, t), _ in jobs})),
                            "data": "ToyWorld train split, paired reads of one image in two models"})
            for (pair, _), m in zip(jobs, fitted):
                out[pair][kind].append(m)
    return out


def run(world, clip_model, clip_params, prompts: dict, reps: dict, pixels: dict, labels: dict,
        caption_model: tuple, config: ml_collections.ConfigDict, train_cfg: ml_collections.ConfigDict,
        workdir: Path, mesh, progress: bool = True) -> dict:
    """The transferability table (see the module docstring). ``prompts``: the CLIP's class-prompt
    embeddings; ``reps``: the pipeline's ``split_reps`` (the CLIP's ``vision.pooled`` is read
    there); ``pixels``: ``{"train", "test": images}`` (every row); ``caption_model``: ``(model,
    params, train reads)`` from ``captioning.run``; ``labels``: ``{"train", "test":
    {family: [N]}}``."""
    t0 = time.perf_counter()
    cfg = config.transfer
    b_model, b_params, b_info = second_clip(world, train_cfg, cfg.clip, workdir, progress, mesh)
    b_prompts = zero_shot.prompt_embeddings(b_model, b_params, world)
    spaces = {"clip": clip_space("clip", clip_model, clip_params, prompts,
                                 {s: reps[s]["vision"][SITE] for s in ("train", "test")}, cfg.num_steer),
              "clip_b": clip_space("clip_b", b_model, b_params, b_prompts,
                                   clip_reads(b_model, b_params, pixels), cfg.num_steer),
              "captioner": captioner_space(*caption_model[:2], world, clip_model, clip_params,
                                           caption_model[2], pixels["test"], cfg.num_steer)}
    t_fit = time.perf_counter()
    maps = fit_maps(spaces, config.align, tuple(cfg.map_kinds), cfg.map_epochs, workdir, mesh, progress)
    fit_seconds = time.perf_counter() - t_fit
    table = {f"{s}->{t}": transfer_scores(spaces[s], spaces[t], maps[(s, t)], world.families, labels,
                                          list(config.align.seeds), cfg.alphas, cfg.num_steer)
             for s, t in PAIRS}
    return {
        "pairs": table,
        "models": {"clip": {"hidden_size": clip_model.config.vision_config.hidden_size,
                            "num_layers": clip_model.config.vision_config.num_hidden_layers,
                            "weights_sha256": params_hash(clip_params)},
                   "clip_b": {**b_info, "weights_sha256": params_hash(b_params),
                              "zero_shot_vision": _vision_zero_shot(spaces["clip_b"], b_model, b_params,
                                                                    b_prompts, labels["test"])},
                   "captioner": {"site": spaces["captioner"].site}},
        "sites": {name: s.site for name, s in spaces.items()},
        "alphas": list(cfg.alphas), "seeds": list(config.align.seeds), "num_steer": cfg.num_steer,
        "map_kinds": list(cfg.map_kinds), "map_epochs": cfg.map_epochs,
        "map_fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _vision_zero_shot(space: Space, model, params, prompts: dict, test_labels: dict) -> dict:
    """The second CLIP's held-out image zero-shot accuracy per family (how well it learnt)."""
    emb = np.asarray(model.apply({"params": params}, "vision", space.test, method="from_pooled")[0])
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    return zero_shot.zero_shot_accuracy({"vision": emb}, prompts, test_labels)["vision"]
