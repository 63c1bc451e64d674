"""The MRepE stages on a real CLIP checkpoint and real data (``configs/clip.py``).

    python -m launch.run --config=configs/clip.py --workdir=runs/clip-b32 \
        --config.model.name=openai/clip-vit-base-patch32

- Model: any HF CLIP directory or hub id (``models.clip.load_pretrained``; safetensors),
  its own tokenizer and image preprocessing, fp32 or bf16.
- Image concepts: one family whose values are a classification dataset's classes (TFDS, e.g.
  ``cifar10``, or a folder ``<split>/<class>/<image>``), with zero-shot prompt templates.
- Text concepts: families of words (e.g. colours) labelling captions (TFDS ``coco_captions`` or a
  text file); a caption names exactly one value of a family or is unlabelled in it. Captions are
  assigned to train / validation / test by position (``i % 5``: 3 / 1 / 1).
- Stages: zero-shot accuracy, identification (Table 1, eq 1 and eq 6, streamed:
  ``stages.identification``), direction bundles with provenance, alignment (Table 2: a text ->
  image map, eq 4 trained with InfoNCE, eq 3, on images paired with a caption naming their
  class, scored by CMC, eq 8: ``stages.alignment``), steering (Table 3's None, Direct
  eq 5 and AP rows: ``stages.steering``) of held-out images and captions toward each value, causal
  patching (eq 2: ``stages.patching``) of image pairs of two classes and of captions with one word
  swapped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mrepe_jax.align.train import MapTrainConfig, train_maps
from mrepe_jax.data import concepts
from mrepe_jax.experiments.clip import data as clip_data
from mrepe_jax.experiments.clip import report as clip_report
from mrepe_jax.metrics.stats import wilson_interval
from mrepe_jax.models import hf_files
from mrepe_jax.models.clip import CLIPModel
from mrepe_jax.models.clip import convert as clip_convert
from mrepe_jax.models.clip.preprocess import (
    ImagePreprocessConfig,
    load_tokenizer,
    preprocess_images,
    tokenize,
)
from mrepe_jax.models.clip.sharding import CLIP_RULES
from mrepe_jax.reading.bundles import params_hash, save_bundle
from mrepe_jax.report import workdir as workdir_lib
from mrepe_jax.report.progress import StageBar
from mrepe_jax.stages import alignment, identification, patching, runtime, steering
from mrepe_jax.stages import seeds as seeds_lib
from mrepe_jax.stages.reads import readout_reps
from mrepe_jax.train import zero_shot

STAGES = ("identification: images", "identification: captions", "direction bundles", "alignment",
          "steering", "causal patching")


class Checkpoint:
    """A CLIP checkpoint with its tokenizer and image preprocessing, and the reads the stages make."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh_cfg: ml_collections.ConfigDict | None = None):
        dtype = runtime.compute_dtype(cfg.dtype)
        self.name = cfg.name
        self.directory = hf_files.resolve(cfg.name)
        model, params = clip_convert.load_pretrained(self.directory)
        # On a (data, model) mesh the params go straight from the files into their shards; the
        # streamed reads, patching sweeps and map fits split their batches over data.
        self.mesh = None if mesh_cfg is None else runtime.mesh(mesh_cfg)
        layout = runtime.layout(mesh_cfg or {}, CLIP_RULES)
        self.hash = params_hash(params)
        self.params = runtime.place_params(params, layout, self.mesh)
        self.model = CLIPModel(model.config, dtype=dtype, execution=model.execution)
        self.tokenizer = load_tokenizer(self.directory)
        self.preprocess = ImagePreprocessConfig.from_dir(self.directory)
        self.max_length = model.config.text_config.max_position_embeddings
        self.batch_size = int(cfg.batch_size)

    def images(self, raw: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess_images(list(raw), self.preprocess)

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return tokenize(self.tokenizer, texts, self.max_length)

    def read(self, tower: str, batch: dict, sites=None) -> dict:
        """``{site: [B, D]}`` at ``sites`` (default: every candidate site), one program per tower
        and sites (the last, smaller batch of a split compiles once more)."""
        key, mask = ("image", None) if tower == "vision" else ("input_ids", "attention_mask")
        return identification.read_batch(self.model, self.params, tower, batch, key, mask, sites, self.mesh)

    def prompts(self, values: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """``[K, D]`` unit-norm prompt embeddings, each value's templates averaged (CLIP's prompt
        ensembling)."""
        texts = [t.format(v) for v in values for t in templates]
        ids, mask = self.tokens(texts)
        emb = np.asarray(zero_shot.encode_text(self.model, self.params, ids, mask), np.float64)
        emb = emb.reshape(len(values), len(templates), -1).mean(1)
        return (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """Every stage (module docstring) into ``workdir``: results.json, report.md, heatmaps,
    ``directions/`` and ``maps/`` bundles. One process: on several, each would redo the whole run
    and write the same files, so that is refused."""
    runtime.require_one_process("clip")
    t0 = time.perf_counter()
    ckpt = Checkpoint(config.model, config.mesh)
    config = clip_data.resolve(config)
    data = clip_data.check(config)
    workdir = workdir_lib.claim(workdir, manifest(config, ckpt, data))
    img, cap = config.images, config.captions
    results: dict = {"machine": workdir_lib.machine(), "config": config.to_dict(),
                     "model": {"name": ckpt.name, "directory": str(ckpt.directory),
                               "weights_sha256": ckpt.hash, "dtype": config.model.dtype},
                     "data": {"captions": clip_data.describe_captions(cap, len(data.captions)),
                              "labelled_captions": data.caption_counts()}}
    with StageBar(STAGES, "clip", progress) as clock:
        clock.start("identification: images")
        images = _image_stage(ckpt, config, progress)
        results["zero_shot"] = {"vision": {img.family: images.zero_shot}}
        results["zero_shot_detail"] = {"vision": {img.family: _accuracy_detail(
            images.zero_shot_hits, images.counts["test"], len(img.classes))}}
        results["data"]["images"] = clip_data.describe_images(img, images.counts)
        results["data"]["image_counts"] = images.counts

        clock.start("identification: captions")
        texts = _caption_stage(ckpt, cap, data, progress)
        results["identification"] = _table1(images.rows, texts.rows)

        clock.start("direction bundles")
        results["bundles"] = _save_bundles(
            workdir, ckpt, config, {"vision": (images.rows, images.readouts, {img.family: img.classes}),
                                    "text": (texts.rows, texts.readouts, dict(cap.families))})

        clock.start("alignment")
        results["alignment"] = _alignment(ckpt, config, workdir, images.paired, images.prompts, progress)

        clock.start("steering")
        n = config.steer.num_inputs
        results["steering"] = {"vision": {img.family: _steer(
            ckpt, "vision", images.pool[:n], None, images.pool_labels[:n],
            images.readouts[img.family], images.ap_means, images.prompts, config.steer.alphas,
            img.classes)},
            "text": {}}
        for family in cap.families:
            rows = texts.test_rows(family)[:n]
            ids, mask = ckpt.tokens([texts.captions[i] for i in rows])
            results["steering"]["text"][family] = _steer(
                ckpt, "text", ids, mask, texts.labels[family][rows], texts.readouts[family],
                texts.ap_means[family], texts.prompts[family], config.steer.alphas,
                cap.families[family])

        clock.start("causal patching")
        rng = np.random.default_rng([config.seed, 0xCA5A1])
        kw = dict(seed=config.seed, n_resamples=config.causal.bootstrap_resamples)
        contrast = image_contrast(images.pool, images.pool_labels, config.causal.num_pairs, rng)
        results["causal"] = {"vision": {img.family: patching.patching(
            ckpt.model, ckpt.params, "vision", img.family, contrast,
            patching.prompt_metric(images.prompts, contrast), workdir,
            heads=config.causal.heads, mesh=ckpt.mesh, **kw)}, "text": {}}
        for family, values in cap.families.items():
            rows = texts.test_rows(family)  # never empty: clip_data.check refuses that up front
            contrast = caption_contrast(ckpt, [texts.captions[i] for i in rows], texts.labels[family][rows],
                                        values, config.causal.num_pairs, rng)
            results["causal"]["text"][family] = patching.patching(
                ckpt.model, ckpt.params, "text", family, contrast,
                patching.prompt_metric(texts.prompts[family], contrast), workdir, mesh=ckpt.mesh, **kw)
    results["stage_seconds"] = clock.seconds
    results["seconds"] = round(time.perf_counter() - t0, 1)
    workdir_lib.write_json(workdir / "results.json", results)
    workdir_lib.write_text(workdir / "report.md", clip_report.render(results))
    return results


@dataclasses.dataclass
class _Images:
    """What the image pass leaves for the later stages (all bounded by the config, not the data)."""

    rows: dict  # {family: Table 1 row}
    readouts: dict  # {family: identification.Readout}
    prompts: np.ndarray  # [K, D] class prompts
    zero_shot: float
    zero_shot_hits: int  # test images predicted right
    paired: dict  # {"train"|"test": (vision.proj rows, labels)} for the maps
    pool: np.ndarray  # preprocessed test images for steering and contrast pairs
    pool_labels: np.ndarray
    ap_means: np.ndarray  # [K, D] each class's mean readout (CLS) token at the steering site
    counts: dict  # {split: images read}


def _image_stage(ckpt: Checkpoint, config, progress: bool) -> _Images:
    """One streamed pass per split of the image data: Table 1 of the vision tower, zero-shot hits,
    and the few rows later stages need."""
    img = config.images
    prompts = ckpt.prompts(img.classes, img.templates)
    hits, pool, pool_labels = [], [], []
    paired = {"train": ([], []), "test": ([], [])}
    pool_size = max(4 * config.causal.num_pairs, config.steer.num_inputs)
    ap = _ReadoutMeans(ckpt, "vision", {img.family: len(img.classes)})
    counts = dict.fromkeys(clip_data.SPLITS, 0)

    def on_batch(split, batch, reps, labels):
        y = labels[img.family]
        counts[split] += len(y)
        if split == "train":
            ap.add(batch, labels)
        if split in paired and len(paired[split][0]) < _align_rows(config.align, split):
            paired[split][0].extend(reps["vision.proj"])
            paired[split][1].extend(y)
        if split == "test":
            hits.append(zero_shot.predict(reps["vision.proj"], prompts) == y)
            if len(pool) < pool_size:
                pool.extend(batch["image"])
                pool_labels.extend(y)

    def batches(split):
        for raw, labels in tqdm(clip_data.image_source(img, split, ckpt.batch_size), desc=f"images: {split}",
                                leave=False, disable=not progress):
            yield {"image": ckpt.images(raw)}, {img.family: labels}

    rows, readouts = identification.stream_identify(
        functools.partial(ckpt.read, "vision"), batches, {img.family: len(img.classes)},
        identification.candidate_sites(ckpt.model, "vision"), "vision.proj", on_batch)
    hits = np.concatenate(hits)
    return _Images(rows, readouts, prompts, float(np.mean(hits)), int(hits.sum()), paired,
                   np.asarray(pool), np.asarray(pool_labels), ap.means()[img.family], counts)


@dataclasses.dataclass
class _Captions:
    """The captions, each family's word labels and prompts, and Table 1 of the text tower."""

    captions: list
    labels: dict  # {family: [N] value index, -1 unlabelled}
    parts: dict  # {split: caption indices}
    prompts: dict  # {family: [K, D]}
    rows: dict
    readouts: dict
    ap_means: dict  # {family: [K, D]} each value's mean readout (EOS) token at the steering site

    def test_rows(self, family: str) -> np.ndarray:
        """The test captions that name a value of ``family``."""
        test = self.parts["test"]
        return test[self.labels[family][test] >= 0]


def _caption_stage(ckpt: Checkpoint, cap, data: clip_data.Data, progress: bool) -> _Captions:
    captions, labels, parts = data.captions, data.labels, data.parts

    def batches(split):
        rows = parts[split]
        for sl in tqdm(list(_chunks(len(rows), ckpt.batch_size)), desc=f"captions: {split}",
                       leave=False, disable=not progress):
            idx = rows[sl]
            ids, mask = ckpt.tokens([captions[i] for i in idx])
            yield {"input_ids": ids, "attention_mask": mask}, {f: lab[idx] for f, lab in labels.items()}

    families = {f: len(v) for f, v in cap.families.items()}
    ap = _ReadoutMeans(ckpt, "text", families)
    rows, readouts = identification.stream_identify(
        functools.partial(ckpt.read, "text"), batches, families,
        identification.candidate_sites(ckpt.model, "text"), "text.proj",
        lambda split, batch, reps, labels: ap.add(batch, labels) if split == "train" else None)
    prompts = {f: ckpt.prompts(values, cap.templates) for f, values in cap.families.items()}
    return _Captions(captions, labels, parts, prompts, rows, readouts, ap.means())


class _ReadoutMeans:
    """Each value's mean activation of the readout token (CLS / EOS) at the tower's steering site,
    summed over the train batches: what Table 3's AP writes there (``stages.steering.EditAP``)."""

    def __init__(self, ckpt: Checkpoint, tower: str, families: dict[str, int]):
        self.ckpt, self.tower, self.families = ckpt, tower, families
        self.site = steering.last_resid(ckpt.model, tower)
        self.keys = ("image", None) if tower == "vision" else ("input_ids", "attention_mask")
        self.sums: dict = {f: None for f in families}

    def add(self, batch: dict, labels: dict) -> None:
        rows = {self.site: readout_reps(self.ckpt.model, self.ckpt.params, self.tower, self.keys, batch,
                                        self.site)}
        for f, k in self.families.items():
            self.sums[f] = identification.accumulate(self.sums[f], rows, labels[f], k)

    def means(self) -> dict[str, np.ndarray]:
        return {f: s[self.site].means() for f, s in self.sums.items()}


def _alignment(ckpt: Checkpoint, config, workdir, paired: dict, class_prompts: np.ndarray,
               progress: bool) -> dict:
    """Table 2's Text-Image row: each image paired with a caption naming its class (a template
    of ``align.templates``, drawn per image), maps text -> image fitted on the train pairs per
    seed and kind, CMC on the test pairs. The MRepE maps are saved as bundles."""
    cfg = config.align
    rng = np.random.default_rng([config.seed, 0xA11])
    reps = {}
    for split, (emb, labels) in paired.items():
        n = _align_rows(cfg, split)
        emb, labels = np.asarray(emb)[:n], np.asarray(labels)[:n]
        if len(np.unique(labels)) < 2:
            raise ValueError(f"alignment needs {split} images of two classes or more; got "
                             f"{len(labels)} images of classes {np.unique(labels).tolist()}")
        texts = [cfg.templates[t].format(config.images.classes[c])
                 for c, t in zip(labels, rng.integers(0, len(cfg.templates), len(labels)))]
        text = np.concatenate([ckpt.read("text", dict(zip(("input_ids", "attention_mask"),
                                                          ckpt.tokens(texts[sl]))), ("text.proj",))["text.proj"]
                               for sl in _chunks(len(texts), ckpt.batch_size)])
        reps[split] = (text, emb.astype(np.float32))
    seeds = [int(s) + seeds_lib.offset(config.seed) for s in cfg.seeds]
    provenance = {"model": ckpt.name, "weights_sha256": ckpt.hash,
                  "data": f"{clip_data.describe_images(config.images)}; captions from align.templates"}
    src, tgt = reps["train"]
    maps = {}
    for kind in cfg.map_kinds:
        mcfg = MapTrainConfig(**{**cfg.map.to_dict(), "kind": kind})
        maps[kind] = train_maps(mcfg, np.stack([src] * len(seeds)), np.stack([tgt] * len(seeds)),
                                seeds=seeds, source_site="text.proj", target_site="vision.proj",
                                checkpoint_dir=Path(workdir) / "checkpoints" / "maps" / kind,
                                provenance=provenance, progress=progress, mesh=ckpt.mesh)
    for seed, m in zip(seeds, maps["mrepe"]):
        m.save(Path(workdir) / "maps" / f"text_to_vision_proj_seed{seed}")
    scale = min(float(np.exp(np.asarray(ckpt.params["logit_scale"]))), 100.0)  # CLIP clamps it at 100
    row = alignment.cmc_row(*reps["test"], maps, {config.images.family: class_prompts}, scale,
                            jax.random.key(seeds[0]))
    return {"Text-Image": row, "seeds": seeds, "num_train": len(src), "num_test": len(reps["test"][0]),
            "map_kinds": list(cfg.map_kinds)}


def _align_rows(cfg, split: str) -> int:
    """How many images of ``split`` the maps are fitted (train) or scored (test) on."""
    return int(cfg.num_train if split == "train" else cfg.num_test)


def _steer(ckpt: Checkpoint, tower: str, inputs, mask, labels, readout: identification.Readout,
           ap_means: np.ndarray, prompts: np.ndarray, alphas, names) -> dict:
    """``stages.steering`` at the tower's last layer, from the train split's sums there (eq 6
    directions of token means; AP writes the readout token's class means ``ap_means``)."""
    site = steering.last_resid(ckpt.model, tower)
    sums = readout.sums[site]
    return steering.steer(ckpt.model, ckpt.params, tower, inputs, mask, labels, site,
                          sums.directions(), ap_means, sums.mean_norm(), alphas, prompts, names)


def image_contrast(images: np.ndarray, labels: np.ndarray, num_pairs: int,
                   rng: np.random.Generator) -> patching.Contrast:
    """``num_pairs`` pairs of test images of two different classes (the clean class's prompt vs the
    corrupt class's is the metric)."""
    if len(np.unique(labels)) < 2:
        raise ValueError(f"causal pairs need test images of two classes; the first {len(labels)} "
                         f"test images are all of class {labels[:1].tolist()}")
    clean = rng.choice(len(labels), num_pairs, replace=len(labels) < num_pairs)
    corrupt = np.array([rng.choice(np.flatnonzero(labels != labels[i])) for i in clean])
    return patching.Contrast(images[clean], images[corrupt], labels[clean], labels[corrupt])


def caption_contrast(ckpt: Checkpoint, captions: list[str], labels: np.ndarray,
                     values: Sequence[str], num_pairs: int, rng: np.random.Generator) -> patching.Contrast:
    """Each pair: a test caption naming value ``a`` and the same caption with that word swapped for
    another value ``b`` (drawn per pair)."""
    pick = rng.choice(len(captions), num_pairs, replace=len(captions) < num_pairs)
    clean_v = labels[pick]
    corrupt_v = (clean_v + rng.integers(1, len(values), num_pairs)) % len(values)
    clean = [captions[i] for i in pick]
    corrupt = [concepts.swap_word(c, values[a], values[b]) for c, a, b in zip(clean, clean_v, corrupt_v)]
    (ids_c, mask_c), (ids_x, mask_x) = ckpt.tokens(clean), ckpt.tokens(corrupt)
    labels = tuple(t.replace("</w>", "") for t in ckpt.tokenizer.convert_ids_to_tokens(ids_c[0].tolist()))
    return patching.Contrast(ids_c, ids_x, clean_v, corrupt_v, mask_c, mask_x, labels)


def _table1(vision_rows: dict, text_rows: dict) -> dict:
    out: dict = {k: {"vision": {}, "text": {}} for k in
                 ("baseline", "mrepe", "mrepe_site", "direction_auroc", "direction_site")}
    for tower, rows in (("vision", vision_rows), ("text", text_rows)):
        for family, row in rows.items():
            for key, value in row.items():
                out[key][tower][family] = value
    return out


def _save_bundles(workdir, ckpt: Checkpoint, config, towers: dict) -> list[str]:
    """One bundle per tower and family: each value's eq 6 direction at the family's best site."""
    paths = []
    for tower, (rows, readouts, families) in towers.items():
        for family, values in families.items():
            site = rows[family]["direction_site"]
            directions = readouts[family].directions[site]
            provenance = {"model": ckpt.name, "weights_sha256": ckpt.hash, "site": site,
                          "method": "mean_diff (eq 6): value vs the family's other values",
                          "concept": {"family": family, "values": list(values)},
                          "sign": "+: the value", "data_seed": int(config.seed),
                          "data": clip_data.describe_images(config.images) if tower == "vision"
                          else clip_data.describe_captions(config.captions)}
            st, _ = save_bundle(workdir / "directions" / f"{tower}_{family}",
                                {v: directions[k] for k, v in enumerate(values)}, provenance)
            paths.append(str(st.relative_to(workdir)))
    return paths


def _accuracy_detail(hits: int, n: int, num_classes: int) -> dict:
    """Zero-shot accuracy (``hits`` of ``n`` test images) with its 95% Wilson interval and the
    chance level (1 / classes)."""
    lo, hi = wilson_interval(hits, n)
    return {"accuracy": hits / n, "ci95": [lo, hi], "num_test": n, "chance": 1.0 / num_classes}


#: Settings that change how a run executes, not what it computes: a rerun may change them.
EXECUTION_ONLY = (("model", "batch_size"), ("images", "data_dir"), ("images", "download"),
                  ("captions", "data_dir"), ("captions", "download"), ("align", "map", "checkpoint_every"))


def manifest(config: ml_collections.ConfigDict, ckpt: Checkpoint, data: clip_data.Data) -> dict:
    """What a workdir's results depend on: the config (less ``EXECUTION_ONLY``), the weights and
    the data's fingerprint (``report.workdir.claim`` compares it with the workdir's)."""
    settings = config.to_dict()
    for path in EXECUTION_ONLY:
        node = settings
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return {"experiment": "clip", "config": settings,
            "model": {"weights_sha256": ckpt.hash}, "data": data.fingerprint}


def summary(results: dict, workdir) -> str:
    """What ``launch.run`` prints at the end."""
    return clip_report.summary(results, workdir)
