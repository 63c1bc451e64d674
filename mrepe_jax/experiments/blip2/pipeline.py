"""The MRepE stages on a real BLIP-2 (OPT) checkpoint, real images and their captions (``configs/blip2.py``).

    python -m launch.run --config=configs/blip2.py --workdir=runs/blip2-opt-2.7b \
        --config.model.name=Salesforce/blip2-opt-2.7b

- Model: any HF BLIP-2 with an OPT language model (``models.blip2.load_pretrained``; a directory or
  a hub id; safetensors), its own processor, fp32 or bf16 compute. Flan-T5 BLIP-2s are refused.
- Data: images with captions (TFDS ``coco_captions`` or a folder + JSONL, ``experiments/blip2/data``),
  streamed batch by batch. An image has a concept value when its captions name it (and no other
  value of its family).
- Stages:
  - identification (Table 1): eq 1 prototypes and eq 6 directions at every layer of the EVA ViT
    (mean over its tokens), the Q-Former (mean over the query tokens) and OPT (the last prompt
    token), streamed (``stages.identification``); held-out AUROC at the site best on validation,
    per part and over all; the Baseline is the Q-Former's output (what BLIP-2 hands OPT);
  - direction bundles with provenance, per family and part;
  - steering (Table 3 for captions, ``experiments/blip2/steering``): None, AP and Direct (eq 5)
    at the Q-Former output and at one OPT layer, scored on greedy captions;
  - causal patching (eq 2): exact vs attribution of the first generated token's logit difference
    between two concept words, on image pairs of two values, over the Q-Former and OPT layers
    (``models.blip2.staging``).
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mrepe_jax.control.captions import PatchPromptEnd, ReplaceAt
from mrepe_jax.experiments.blip2 import data as blip2_data
from mrepe_jax.experiments.blip2 import report as blip2_report
from mrepe_jax.experiments.blip2 import steering as blip2_steering
from mrepe_jax.experiments.blip2.checkpoint import PARTS, Checkpoint
from mrepe_jax.models.blip2.staging import word_metric
from mrepe_jax.reading.bundles import save_bundle
from mrepe_jax.report import html as report_html
from mrepe_jax.report import workdir as workdir_lib
from mrepe_jax.report.progress import StageBar
from mrepe_jax.stages import identification, patching, runtime

STAGES = ("identification", "direction bundles", "steering", "causal patching")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """Every stage (module docstring) into ``workdir``: results.json, report.md, heatmaps and
    ``directions/`` bundles. One process (as the CLIP experiment)."""
    runtime.require_one_process("blip2")
    t0 = time.perf_counter()
    ckpt = Checkpoint(config.model, config.mesh)
    data = blip2_data.load(config.data)
    lm_layer = _lm_layer(ckpt, config.steer.lm_layer)
    workdir = workdir_lib.claim(workdir, manifest(config, ckpt, data))
    families = blip2_data.concept_families(config.data)
    results: dict = {
        "machine": workdir_lib.machine(), "config": config.to_dict(),
        "model": {"name": ckpt.name, "directory": str(ckpt.directory), "weights_sha256": ckpt.hash,
                  "dtype": config.model.dtype, "layers": ckpt.model.tower_layers(),
                  "num_query_tokens": ckpt.config.num_query_tokens},
        "data": {"source": blip2_data.describe(config.data), "images": data.fingerprint["images"],
                 "labelled": data.counts()}}
    with StageBar(STAGES, "blip2", progress) as clock:
        clock.start("identification")
        ident = _identify(ckpt, config, data, families, progress)
        results["identification"] = ident.rows

        clock.start("direction bundles")
        results["bundles"] = _save_bundles(workdir, ckpt, config, ident, families)

        clock.start("steering")
        n = int(config.steer.num_inputs)
        embeds = ckpt.image_embeds(ident.pool)
        labels = {f: y[:n] for f, y in ident.pool_labels.items()}
        results["steering"] = _steering(ckpt, config.steer, embeds[:n], labels, families, ident, lm_layer)

        clock.start("causal patching")
        results["causal"] = _patching(ckpt, config, embeds, ident.pool_labels, families, workdir)
    results["stage_seconds"] = clock.seconds
    results["seconds"] = round(time.perf_counter() - t0, 1)
    workdir_lib.write_json(workdir / "results.json", results)
    markdown = blip2_report.render(results)
    workdir_lib.write_text(workdir / "report.md", markdown)
    report_html.write(workdir, markdown, results)  # the same report, interactive, one file
    return results


def _lm_layer(ckpt: Checkpoint, layer) -> int:
    """The OPT layer Table 3 steers at: ``steer.lm_layer`` (negative from the end), or the middle."""
    n = ckpt.model.tower_layers()["lm"]
    if layer is None:
        return n // 2
    if not -n <= int(layer) < n:
        raise ValueError(f"steer.lm_layer {layer} is out of range: OPT has {n} layers (0-{n - 1})")
    return int(layer) % n


@dataclasses.dataclass
class _Identified:
    """What the identification pass leaves for the later stages (bounded by the config)."""

    rows: dict  # {family: Table 1 row with "parts"}
    readouts: dict  # {family: identification.Readout}
    query_means: dict  # {family: [K, Nq, D_q]} each value's mean state per query token (AP)
    query_scale: float  # mean norm of one query token's state at the Q-Former output
    scales: dict  # {site: mean norm of the site's rows over every train image}
    pool: np.ndarray  # preprocessed test images for steering and patching
    pool_labels: dict  # {family: [N]}


class _Reader:
    """``batch -> {site: [B, D]}`` for ``stage_identify``, keeping the batch's per-token Q-Former
    output for the train split's AP sums."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.tokens = ckpt, None

    def __call__(self, batch: dict) -> dict:
        reps, self.tokens = self.ckpt.read(batch["pixels"])
        return reps


def _identify(ckpt: Checkpoint, config, data: blip2_data.Data, families: dict, progress: bool) -> _Identified:
    cfg = config.data
    pool_size = max(int(config.steer.num_inputs), 4 * int(config.causal.num_pairs))
    read = _Reader(ckpt)
    query_sums: dict = {f: None for f in families}
    norm = [0.0, 0]
    norms: dict = {}
    pool: list = []
    pool_labels: dict = {f: [] for f in families}

    def batches(split):
        lo = 0
        for raw in tqdm(blip2_data.images(cfg, data, split, ckpt.batch_size), desc=f"images: {split}",
                        leave=False, disable=not progress):
            rows = slice(lo, lo + len(raw))
            lo += len(raw)
            yield {"pixels": ckpt.pixels(raw)}, {f: data.labels[split][f][rows] for f in families}

    def on_batch(split, batch, reps, labels):
        if split == "train":
            tokens = read.tokens
            flat = {"q": tokens.reshape(len(tokens), -1)}
            for f, values in families.items():
                query_sums[f] = identification.accumulate(query_sums[f], flat, labels[f], len(values))
            norm[0] += float(np.linalg.norm(tokens, axis=-1).sum())
            norm[1] += tokens.shape[0] * tokens.shape[1]
            for site, r in reps.items():
                total, count = norms.get(site, (0.0, 0))
                norms[site] = (total + float(np.linalg.norm(r, axis=-1).sum()), count + len(r))
        if split == "test" and len(pool) < pool_size:
            pool.extend(batch["pixels"][:pool_size - len(pool)])
            for f in families:
                pool_labels[f].extend(labels[f][:pool_size - len(pool_labels[f])])

    groups = {PARTS[t]: s for t, s in ckpt.sites.items()}
    rows, readouts = identification.stream_identify(
        read, batches, {f: len(v) for f, v in families.items()}, tuple(s for s in groups.values() for s in s),
        ckpt.qformer_out, on_batch, groups=groups)
    nq = ckpt.config.num_query_tokens
    means = {f: s["q"].means().reshape(len(families[f]), nq, -1) for f, s in query_sums.items()}
    scales = {site: total / max(count, 1) for site, (total, count) in norms.items()}
    return _Identified(rows, readouts, means, norm[0] / max(norm[1], 1), scales, np.asarray(pool),
                       {f: np.asarray(y) for f, y in pool_labels.items()})


def _steering(ckpt: Checkpoint, cfg, embeds: np.ndarray, labels: dict, families: dict, ident: _Identified,
              lm_layer: int) -> dict:
    """Table 3 at the Q-Former output and at OPT layer ``lm_layer`` (``experiments/blip2/steering``)."""
    kw = dict(alphas=tuple(cfg.alphas), max_new_tokens=int(cfg.max_new_tokens), chunk=int(cfg.chunk))
    q_site = ckpt.qformer_out
    lm_site = f"lm.layers.{lm_layer}.resid_post"
    prompt_length = ckpt.config.num_query_tokens + len(ckpt.prompt_ids(""))
    out = {"num_inputs": len(embeds), "sites": {}}
    for key, site, directions, values, edit, scale in (
            ("qformer", q_site, {f: r.directions[q_site] for f, r in ident.readouts.items()}, ident.query_means,
             ReplaceAt(q_site, ("token", "feature")), ident.query_scale),
            ("lm", lm_site, {f: r.directions[lm_site] for f, r in ident.readouts.items()},
             {f: r.sums[lm_site].means() for f, r in ident.readouts.items()}, PatchPromptEnd(lm_site, prompt_length),
             ident.scales[lm_site])):
        out["sites"][key] = blip2_steering.steer(ckpt, embeds, labels, families, site, directions, values, edit,
                                                 scale, **kw)
    return out


def _pairs(labels: np.ndarray, num_pairs: int, rng: np.random.Generator, family: str) -> tuple:
    """``num_pairs`` (clean, corrupt) pool rows labelled with two different values of ``family``."""
    rows = np.flatnonzero(labels >= 0)
    if len(np.unique(labels[rows])) < 2:
        raise ValueError(f"causal pairs for family {family!r} need test images of two of its values; the "
                         f"{len(labels)} pooled test images have values {np.unique(labels[rows]).tolist()}: "
                         "raise steer.num_inputs or causal.num_pairs (the pool holds the first max(steer."
                         "num_inputs, 4 * causal.num_pairs) test images)")
    clean = rng.choice(rows, num_pairs, replace=len(rows) < num_pairs)
    corrupt = np.array([rng.choice(rows[labels[rows] != labels[i]]) for i in clean])
    return clean, corrupt


def _patching(ckpt: Checkpoint, config, embeds: np.ndarray, labels: dict, families: dict, workdir) -> dict:
    """Eq 2 over the Q-Former and OPT layers for every family (module docstring)."""
    cfg = config.causal
    model = ckpt.stages(cfg.prompt)
    rng = np.random.default_rng([config.seed, 0xCA5A1])
    tokens = {f: np.array([ckpt.word_token(w) for w in values]) for f, values in families.items()}
    nq = ckpt.config.num_query_tokens
    prompt = ckpt.tokenizer.convert_ids_to_tokens(list(model.prompt_ids()[nq:]))
    names = {"qformer": tuple(f"q{i}" for i in range(nq)),
             "lm": tuple(f"img{i}" for i in range(nq)) + tuple(str(t).replace("Ġ", "") for t in prompt)}
    inputs = {"qformer": embeds,
              "lm": np.asarray(model.apply({"params": ckpt.params}, embeds, method="features")[0])}
    out: dict = {"qformer": {}, "lm": {}}
    for f in families:
        clean, corrupt = _pairs(labels[f], int(cfg.num_pairs), rng, f)
        a, b = labels[f][clean], labels[f][corrupt]
        metric = word_metric(ckpt.params, tokens[f][a], tokens[f][b])
        for tower in ("qformer", "lm"):
            contrast = patching.Contrast(inputs[tower][clean], inputs[tower][corrupt], a, b,
                                         position_labels=names[tower])
            out[tower][f] = patching.patching(model, ckpt.params, tower, f, contrast, metric, workdir,
                                              seed=config.seed, n_resamples=int(cfg.bootstrap_resamples),
                                              mesh=ckpt.mesh)
    out["prompt"] = cfg.prompt
    out["word_tokens"] = {f: [str(w).replace("Ġ", "") for w in ckpt.tokenizer.convert_ids_to_tokens(t.tolist())]
                          for f, t in tokens.items()}
    return out


def _save_bundles(workdir, ckpt: Checkpoint, config, ident: _Identified, families: dict) -> list[str]:
    """One bundle per family and part: each value's eq 6 direction at the part's best site."""
    paths = []
    for f, values in families.items():
        for tower, part in PARTS.items():
            site = ident.rows[f]["parts"][part]["direction_site"]
            provenance = {"model": ckpt.name, "weights_sha256": ckpt.hash, "site": site,
                          "method": "mean_diff (eq 6): value vs the family's other values",
                          "reduction": "last prompt token" if tower == "lm" else "mean over tokens",
                          "concept": {"family": f, "values": list(values)}, "sign": "+: the value",
                          "data_seed": int(config.seed), "data": blip2_data.describe(config.data)}
            directions = ident.readouts[f].directions[site]
            st, _ = save_bundle(workdir / "directions" / f"{tower}_{f}",
                                {v: directions[k] for k, v in enumerate(values)}, provenance)
            paths.append(str(st.relative_to(workdir)))
    return paths


#: Settings that change how a run executes, not what it computes: a rerun may change them.
EXECUTION_ONLY = (("model", "batch_size"), ("data", "data_dir"), ("data", "download"), ("steer", "chunk"))


def manifest(config: ml_collections.ConfigDict, ckpt: Checkpoint, data: blip2_data.Data) -> dict:
    """What a workdir's results depend on (``report.workdir.claim``)."""
    settings = config.to_dict()
    for section, key in EXECUTION_ONLY:
        settings.get(section, {}).pop(key, None)
    return {"experiment": "blip2", "config": settings, "model": {"weights_sha256": ckpt.hash},
            "data": data.fingerprint}


def summary(results: dict, workdir) -> str:
    """What ``launch.run`` prints at the end."""
    return blip2_report.summary(results, workdir)
