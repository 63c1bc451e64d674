"""The MRepE stages on a real dual-encoder checkpoint (CLIP, CLAP) and real data: what
``experiments/clip`` and ``experiments/clap`` run, each with its ``checkpoint.Checkpoint``.

- Model: a family's HF directory or hub id (safetensors), its own tokenizer and its modality's
  preprocessing (``Checkpoint.inputs``), fp32 or bf16.
- Labelled concepts: one family whose values are a classification dataset's classes (TFDS, e.g.
  ``cifar10`` or ``speech_commands``, or a folder ``<split>/<class>/<file>``: images or WAV
  files, ``modality.Modality``), with zero-shot prompt templates.
- Text concepts: families of words (e.g. colours) labelling captions (TFDS ``coco_captions`` or a
  text file); a caption names exactly one value of a family or is unlabelled in it. Captions are
  assigned to train / validation / test by position (``i % 5``: 3 / 1 / 1).
- Stages: zero-shot accuracy, identification (Table 1, eq 1 and eq 6, streamed:
  ``stages.identification``), direction bundles with provenance, alignment (Table 2: a text ->
  modality map, eq 4 trained with InfoNCE, eq 3, on examples paired with a caption naming their
  class, scored by CMC, eq 8: ``stages.alignment``), steering (Table 3's None, Direct
  eq 5 and AP rows: ``stages.steering``) of held-out examples and captions toward each value,
  causal patching (eq 2: ``stages.patching``) of example pairs of two classes and of captions
  with one word swapped. A hierarchical tower (CLAP's HTSAT) is patched over its last stage's
  blocks, whose shapes agree (``Checkpoint.patch_layers``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mrepe_jax.align.train import MapTrainConfig, train_maps
from mrepe_jax.data import concepts
from mrepe_jax.metrics.stats import wilson_interval
from mrepe_jax.reading.bundles import save_bundle
from mrepe_jax.report import html as report_html
from mrepe_jax.report import workdir as workdir_lib
from mrepe_jax.report.progress import StageBar
from mrepe_jax.stages import alignment, identification, patching, runtime, steering
from mrepe_jax.stages import seeds as seeds_lib
from mrepe_jax.stages.dual_encoder import data as data_lib
from mrepe_jax.stages.dual_encoder import decomposition
from mrepe_jax.stages.dual_encoder import report as report_lib
from mrepe_jax.stages.dual_encoder.checkpoint import TEXT_KEYS, Checkpoint
from mrepe_jax.stages.reads import readout_reps
from mrepe_jax.train import zero_shot


def stages(modality) -> tuple[str, ...]:
    """The run's stages, as its progress bar and ``stage_seconds`` name them."""
    return (f"identification: {modality.plural}", "identification: captions", "direction bundles",
            "alignment", "steering", "causal patching", "decomposition")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


def run(experiment: str, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        load: Callable[[ml_collections.ConfigDict], Checkpoint], progress: bool = True) -> dict:
    """Every stage (module docstring) into ``workdir``: results.json, report.md, heatmaps,
    ``directions/`` and ``maps/`` bundles. ``load(config)`` gives the checkpoint. One process: on
    several, each would redo the whole run and write the same files, so that is refused."""
    runtime.require_one_process(experiment)
    t0 = time.perf_counter()
    ckpt = load(config)
    mod = ckpt.modality
    config = data_lib.resolve(config, mod)
    patch_layers = ckpt.patch_layers(config)  # a bad setting fails here, before any stage
    data = data_lib.check(config, mod)
    workdir = workdir_lib.claim(workdir, manifest(experiment, config, ckpt, data))
    lab, cap = config[mod.section], config.captions
    tower = mod.tower
    results: dict = {"machine": workdir_lib.machine(), "config": config.to_dict(),
                     "model": {"name": ckpt.name, "directory": str(ckpt.directory),
                               "weights_sha256": ckpt.hash, "dtype": config.model.dtype},
                     "modality": {"tower": tower, "section": mod.section, "noun": mod.noun,
                                  "plural": mod.plural, "pair": mod.pair, "readout": mod.readout,
                                  "text_readout": ckpt.text_readout},
                     "data": {"captions": data_lib.describe_captions(cap, len(data.captions)),
                              "labelled_captions": data.caption_counts()}}
    with StageBar(stages(mod), experiment, progress) as clock:
        clock.start(f"identification: {mod.plural}")
        labelled = _labelled_stage(ckpt, config, progress)
        results["zero_shot"] = {tower: {lab.family: labelled.zero_shot}}
        results["zero_shot_detail"] = {tower: {lab.family: _accuracy_detail(
            labelled.zero_shot_hits, labelled.counts["test"], len(lab.classes))}}
        results["data"]["labelled"] = data_lib.describe(lab, mod, labelled.counts)
        results["data"]["counts"] = labelled.counts

        clock.start("identification: captions")
        texts = _caption_stage(ckpt, cap, data, progress)
        results["identification"] = _table1({tower: labelled.rows, "text": texts.rows})

        clock.start("direction bundles")
        results["bundles"] = _save_bundles(
            workdir, ckpt, config, {tower: (labelled.rows, labelled.readouts, {lab.family: lab.classes}),
                                    "text": (texts.rows, texts.readouts, dict(cap.families))})

        clock.start("alignment")
        results["alignment"] = _alignment(ckpt, config, workdir, labelled.paired, labelled.prompts, progress)

        clock.start("steering")
        n = config.steer.num_inputs
        results["steering"] = {tower: {lab.family: _steer(
            ckpt, tower, labelled.pool[:n], None, labelled.pool_labels[:n],
            labelled.readouts[lab.family], labelled.ap_means, labelled.prompts, config.steer.alphas,
            lab.classes)},
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
        kw = dict(seed=config.seed, n_resamples=config.causal.bootstrap_resamples, mesh=ckpt.mesh)
        contrast = labelled_contrast(labelled.pool, labelled.pool_labels, config.causal.num_pairs, rng)
        results["causal"] = {tower: {lab.family: patching.patching(
            ckpt.model, ckpt.params, tower, lab.family, contrast,
            patching.prompt_metric(labelled.prompts, contrast), workdir,
            heads=bool(config.causal.get("heads", False)), layers=patch_layers, **kw)},
            "text": {}}
        for family, values in cap.families.items():
            rows = texts.test_rows(family)  # never empty: data_lib.check refuses that up front
            contrast = caption_contrast(ckpt, [texts.captions[i] for i in rows], texts.labels[family][rows],
                                        values, config.causal.num_pairs, rng)
            results["causal"]["text"][family] = patching.patching(
                ckpt.model, ckpt.params, "text", family, contrast,
                patching.prompt_metric(texts.prompts[family], contrast), workdir, **kw)

        clock.start("decomposition")
        results["decomposition"] = decomposition.run(ckpt, config, labelled.pool, labelled.pool_labels,
                                                     labelled.prompts)
    results["stage_seconds"] = clock.seconds
    results["seconds"] = round(time.perf_counter() - t0, 1)
    workdir_lib.write_json(workdir / "results.json", results)
    markdown = report_lib.render(results)
    workdir_lib.write_text(workdir / "report.md", markdown)
    report_html.write(workdir, markdown, results)  # the same report, interactive, one file
    return results


@dataclasses.dataclass
class _Labelled:
    """What the labelled pass leaves for the later stages (all bounded by the config, not the data)."""

    rows: dict  # {family: Table 1 row}
    readouts: dict  # {family: identification.Readout}
    prompts: np.ndarray  # [K, D] class prompts
    zero_shot: float
    zero_shot_hits: int  # test examples predicted right
    paired: dict  # {"train"|"test": ({tower}.proj rows, labels)} for the maps
    pool: np.ndarray  # preprocessed test inputs for steering and contrast pairs
    pool_labels: np.ndarray
    ap_means: np.ndarray  # [K, D] each class's mean readout token at the steering site
    counts: dict  # {split: examples read}


def _labelled_stage(ckpt: Checkpoint, config, progress: bool) -> _Labelled:
    """One streamed pass per split of the labelled data: Table 1 of the modality's tower,
    zero-shot hits, and the few rows later stages need."""
    mod = ckpt.modality
    lab, proj = config[mod.section], f"{mod.tower}.proj"
    prompts = ckpt.prompts(mod.prompt_names(lab.classes), lab.templates)
    hits, pool, pool_labels = [], [], []
    paired = {"train": ([], []), "test": ([], [])}
    pool_size = max(4 * config.causal.num_pairs, config.steer.num_inputs)
    ap = _ReadoutMeans(ckpt, mod.tower, {lab.family: len(lab.classes)})
    counts = dict.fromkeys(data_lib.SPLITS, 0)

    def on_batch(split, batch, reps, labels):
        y = labels[lab.family]
        counts[split] += len(y)
        if split == "train":
            ap.add(batch, labels)
        if split in paired and len(paired[split][0]) < _align_rows(config.align, split):
            paired[split][0].extend(reps[proj])
            paired[split][1].extend(y)
        if split == "test":
            hits.append(zero_shot.predict(reps[proj], prompts) == y)
            if len(pool) < pool_size:
                pool.extend(batch[mod.input_key])
                pool_labels.extend(y)

    def batches(split):
        for raw, labels in tqdm(mod.batches(lab, split, ckpt.batch_size), desc=f"{mod.plural}: {split}",
                                leave=False, disable=not progress):
            yield {mod.input_key: ckpt.inputs(raw)}, {lab.family: labels}

    rows, readouts = identification.stream_identify(
        functools.partial(ckpt.read, mod.tower), batches, {lab.family: len(lab.classes)},
        identification.candidate_sites(ckpt.model, mod.tower), proj, on_batch)
    hits = np.concatenate(hits)
    return _Labelled(rows, readouts, prompts, float(np.mean(hits)), int(hits.sum()), paired,
                     np.asarray(pool), np.asarray(pool_labels), ap.means()[lab.family], counts)


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


def _caption_stage(ckpt: Checkpoint, cap, data: data_lib.Data, progress: bool) -> _Captions:
    captions, labels, parts = data.captions, data.labels, data.parts

    def batches(split):
        rows = parts[split]
        for sl in tqdm(list(_chunks(len(rows), ckpt.batch_size)), desc=f"captions: {split}",
                       leave=False, disable=not progress):
            idx = rows[sl]
            ids, mask = ckpt.tokens([captions[i] for i in idx])
            yield dict(zip(TEXT_KEYS, (ids, mask))), {f: lab[idx] for f, lab in labels.items()}

    families = {f: len(v) for f, v in cap.families.items()}
    ap = _ReadoutMeans(ckpt, "text", families)
    rows, readouts = identification.stream_identify(
        functools.partial(ckpt.read, "text"), batches, families,
        identification.candidate_sites(ckpt.model, "text"), "text.proj",
        lambda split, batch, reps, labels: ap.add(batch, labels) if split == "train" else None)
    prompts = {f: ckpt.prompts(values, cap.templates) for f, values in cap.families.items()}
    return _Captions(captions, labels, parts, prompts, rows, readouts, ap.means())


class _ReadoutMeans:
    """Each value's mean activation of the readout token (CLS / EOS; the token mean for a tower
    that pools it) at the tower's steering site,
    summed over the train batches: what Table 3's AP writes there (``stages.steering.EditAP``)."""

    def __init__(self, ckpt: Checkpoint, tower: str, families: dict[str, int]):
        self.ckpt, self.tower, self.families = ckpt, tower, families
        self.site = steering.last_resid(ckpt.model, tower)
        self.keys = ckpt.keys(tower)
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
    """Table 2's text-modality row (``Text-Image``, ``Text-Audio``): each example paired with a
    caption naming its class (a template of ``align.templates``, drawn per example), maps text ->
    modality fitted on the train pairs per seed and kind, CMC on the test pairs. The MRepE maps
    are saved as bundles."""
    cfg, mod = config.align, ckpt.modality
    lab = config[mod.section]
    names = mod.prompt_names(lab.classes)
    rng = np.random.default_rng([config.seed, 0xA11])
    reps = {}
    for split, (emb, labels) in paired.items():
        n = _align_rows(cfg, split)
        emb, labels = np.asarray(emb)[:n], np.asarray(labels)[:n]
        if len(np.unique(labels)) < 2:
            raise ValueError(f"alignment needs {split} {mod.plural} of two classes or more; got "
                             f"{len(labels)} {mod.plural} of classes {np.unique(labels).tolist()}")
        texts = [cfg.templates[t].format(names[c])
                 for c, t in zip(labels, rng.integers(0, len(cfg.templates), len(labels)))]
        text = np.concatenate([ckpt.read("text", dict(zip(TEXT_KEYS, ckpt.tokens(texts[sl]))),
                                         ("text.proj",))["text.proj"]
                               for sl in _chunks(len(texts), ckpt.batch_size)])
        reps[split] = (text, emb.astype(np.float32))
    seeds = [int(s) + seeds_lib.offset(config.seed) for s in cfg.seeds]
    provenance = {"model": ckpt.name, "weights_sha256": ckpt.hash,
                  "data": f"{data_lib.describe(lab, mod)}; captions from align.templates"}
    src, tgt = reps["train"]
    maps = {}
    for kind in cfg.map_kinds:
        mcfg = MapTrainConfig(**{**cfg.map.to_dict(), "kind": kind})
        maps[kind] = train_maps(mcfg, np.stack([src] * len(seeds)), np.stack([tgt] * len(seeds)),
                                seeds=seeds, source_site="text.proj", target_site=f"{mod.tower}.proj",
                                checkpoint_dir=Path(workdir) / "checkpoints" / "maps" / kind,
                                provenance=provenance, progress=progress, mesh=ckpt.mesh)
    for seed, m in zip(seeds, maps["mrepe"]):
        m.save(Path(workdir) / "maps" / f"text_to_{mod.tower}_proj_seed{seed}")
    row = alignment.cmc_row(*reps["test"], maps, {lab.family: class_prompts}, ckpt.logit_scale(),
                            jax.random.key(seeds[0]))
    return {mod.pair: row, "seeds": seeds, "num_train": len(src), "num_test": len(reps["test"][0]),
            "map_kinds": list(cfg.map_kinds)}


def _align_rows(cfg, split: str) -> int:
    """How many labelled examples of ``split`` the maps are fitted (train) or scored (test) on."""
    return int(cfg.num_train if split == "train" else cfg.num_test)


def _steer(ckpt: Checkpoint, tower: str, inputs, mask, labels, readout: identification.Readout,
           ap_means: np.ndarray, prompts: np.ndarray, alphas, names) -> dict:
    """``stages.steering`` at the tower's last layer, from the train split's sums there (eq 6
    directions of token means; AP writes the readout token's class means ``ap_means``)."""
    site = steering.last_resid(ckpt.model, tower)
    sums = readout.sums[site]
    return steering.steer(ckpt.model, ckpt.params, tower, inputs, mask, labels, site,
                          sums.directions(), ap_means, sums.mean_norm(), alphas, prompts, names)


def labelled_contrast(inputs: np.ndarray, labels: np.ndarray, num_pairs: int,
                      rng: np.random.Generator) -> patching.Contrast:
    """``num_pairs`` pairs of test inputs (images, audio features) of two different classes (the
    clean class's prompt vs the corrupt class's is the metric)."""
    if len(np.unique(labels)) < 2:
        raise ValueError(f"causal pairs need test examples of two classes; the first {len(labels)} "
                         f"test examples are all of class {labels[:1].tolist()}")
    clean = rng.choice(len(labels), num_pairs, replace=len(labels) < num_pairs)
    corrupt = np.array([rng.choice(np.flatnonzero(labels != labels[i])) for i in clean])
    return patching.Contrast(inputs[clean], inputs[corrupt], labels[clean], labels[corrupt])


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
    return patching.Contrast(ids_c, ids_x, clean_v, corrupt_v, mask_c, mask_x, ckpt.token_labels(ids_c[0]))


def _table1(towers: dict[str, dict]) -> dict:
    """``{key: {tower: {family: value}}}`` from each tower's ``{family: Table 1 row}``."""
    out: dict = {k: {t: {} for t in towers} for k in
                 ("baseline", "mrepe", "mrepe_site", "direction_auroc", "direction_site")}
    for tower, rows in towers.items():
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
                          "data": data_lib.describe_captions(config.captions) if tower == "text"
                          else data_lib.describe(config[ckpt.modality.section], ckpt.modality)}
            st, _ = save_bundle(workdir / "directions" / f"{tower}_{family}",
                                {v: directions[k] for k, v in enumerate(values)}, provenance)
            paths.append(str(st.relative_to(workdir)))
    return paths


def _accuracy_detail(hits: int, n: int, num_classes: int) -> dict:
    """Zero-shot accuracy (``hits`` of ``n`` test examples) with its 95% Wilson interval and the
    chance level (1 / classes)."""
    lo, hi = wilson_interval(hits, n)
    return {"accuracy": hits / n, "ci95": [lo, hi], "num_test": n, "chance": 1.0 / num_classes}


def execution_only(section: str) -> tuple[tuple[str, ...], ...]:
    """Settings that change how a run executes, not what it computes: a rerun may change them."""
    return (("model", "batch_size"), (section, "data_dir"), (section, "download"),
            ("captions", "data_dir"), ("captions", "download"), ("align", "map", "checkpoint_every"))


def manifest(experiment: str, config: ml_collections.ConfigDict, ckpt: Checkpoint,
             data: data_lib.Data) -> dict:
    """What a workdir's results depend on: the config (less ``execution_only``), the weights and
    the data's fingerprint (``report.workdir.claim`` compares it with the workdir's)."""
    settings = config.to_dict()
    for path in execution_only(ckpt.modality.section):
        node = settings
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return {"experiment": experiment, "config": settings,
            "model": {"weights_sha256": ckpt.hash}, "data": data.fingerprint}
