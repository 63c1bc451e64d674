"""A dual-encoder experiment's data: labelled examples of its modality (images, audio: TFDS or a
folder ``<split>/<class>/<file>``, ``modality.Modality``) and captions whose words name concept
values (TFDS or a text file), checked in full before the first stage runs.

``check(config, modality)`` reads what a run will read and refuses, naming the config field to
change: an unreadable file (every file a folder run reads is checked as the modality says: an
image decoded, a WAV header parsed and its rate checked), a split with a class missing, fewer
training pairs than one batch of the alignment maps, and a concept value no training caption
names. It returns the captions and their labels (read once) and a fingerprint
of the data, which the workdir keeps so that a rerun on other data is refused before it writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from mrepe_jax.align.maps import TRAINED_KINDS
from mrepe_jax.align.train import MapTrainConfig
from mrepe_jax.data import concepts
from mrepe_jax.stages.dual_encoder.modality import Modality

SPLITS = ("train", "validation", "test")


def caption_source(cfg: ml_collections.ConfigDict) -> list[str]:
    if cfg.source == "tfds":
        return concepts.tfds_captions(cfg.name, cfg.split, limit=cfg.limit, data_dir=cfg.data_dir,
                                      download=cfg.download)
    return concepts.file_captions(cfg.path, limit=cfg.limit)


def caption_split(n: int) -> dict[str, np.ndarray]:
    """Caption ``i`` is in train when ``i % 5 < 3``, validation when 3, test when 4."""
    r = np.arange(n) % 5
    return {"train": np.flatnonzero(r < 3), "validation": np.flatnonzero(r == 3),
            "test": np.flatnonzero(r == 4)}


@dataclasses.dataclass
class Data:
    """What ``check`` found: the captions, their labels and split, how many labelled examples of
    each split the run reads (``None`` for TFDS, whose counts are known only once read), and the
    fingerprint."""

    captions: list[str]
    labels: dict[str, np.ndarray]  # {family: [N] value index, -1 unlabelled}
    parts: dict[str, np.ndarray]  # {split: caption indices}
    counts: dict[str, int] | None
    fingerprint: dict

    def caption_counts(self) -> dict:
        """``{family: {split: labelled captions}}``."""
        return {f: {s: int((lab[self.parts[s]] >= 0).sum()) for s in SPLITS} for f, lab in self.labels.items()}


def resolve(config: ml_collections.ConfigDict, modality: Modality) -> ml_collections.ConfigDict:
    """``config``, or a copy of it whose empty ``<section>.classes`` is a folder's class subfolders
    (those of its train split). A folder run with classes its train split lacks is refused here,
    with the flag that names the folder's own."""
    sec = modality.section
    cfg = config[sec]
    if cfg.source != "folder":
        if not cfg.classes:
            raise ValueError(f"{sec}.classes is empty: list the dataset's class names "
                             f"(--config.{sec}.classes=\"('cat', 'dog')\")")
        return config
    found = modality.folder_classes(cfg)
    if not found:
        raise ValueError(f"{modality.noun} folder {str(cfg.path)!r}/{cfg.folders.train} has no class "
                         f"subfolders (laid out as <split>/<class>/<{modality.noun}>)")
    if cfg.classes:
        missing = [c for c in cfg.classes if c not in found]
        if missing:
            raise ValueError(
                f"{sec}.classes {missing} are not class subfolders of {str(cfg.path)!r}/"
                f"{cfg.folders.train}, whose classes are {found}: pass "
                f"--config.{sec}.classes=\"{tuple(found)}\" (or a subset), or "
                f"--config.{sec}.classes=() to take them all")
        return config
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved[sec].classes = tuple(found)
    return resolved


def check(config: ml_collections.ConfigDict, modality: Modality) -> Data:
    """Everything the stages will read, checked before the first one (module docstring)."""
    sec = modality.section
    cfg, cap = config[sec], config.captions
    if cfg.source not in ("tfds", "folder"):
        raise ValueError(f"{sec}.source {cfg.source!r} is not one of ['tfds', 'folder']")
    if cap.source not in ("tfds", "file"):
        raise ValueError(f"captions.source {cap.source!r} is not one of ['tfds', 'file']")
    if cfg.source == "folder":
        counts, print_ = _check_folder(cfg, modality)
    else:
        for split in SPLITS:  # the dataset, its label names and each split open (nothing is read)
            modality.batches(cfg, split, batch_size=1)
        counts, print_ = None, {"tfds": cfg.name, "splits": dict(cfg.splits),
                                "classes": list(cfg.classes), "num": dict(cfg.num)}
    _check_alignment_sizes(config, modality, counts)
    captions = caption_source(cap)
    labels = {f: concepts.word_labels(captions, values) for f, values in cap.families.items()}
    parts = caption_split(len(captions))
    _check_caption_coverage(cap, captions, labels, parts)
    caption_print = {"source": describe_captions(cap, len(captions)),
                     "sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest()}
    return Data(captions, labels, parts, counts, {sec: print_, "captions": caption_print})


def _check_folder(cfg, modality: Modality) -> tuple[dict[str, int], dict]:
    """Per split: the files the run reads exist, are listed classes, are readable (``check_file``:
    an image decodes in full, a WAV header parses), and hold every class; returns ``({split:
    files read}, fingerprint)``."""
    counts, digest = {}, hashlib.sha256()
    for split in SPLITS:
        folder = cfg.folders[split]
        files = modality.folder_files(cfg, split)
        seen = np.bincount([label for _, label in files], minlength=len(cfg.classes))
        missing = [c for c, n in zip(cfg.classes, seen) if n == 0]
        if missing:
            raise ValueError(f"{modality.section}.num.{split}={cfg.num[split]} reads no {modality.noun} "
                             f"of class(es) {missing} from {str(cfg.path)!r}/{folder}: raise it")
        for path, label in files:
            modality.check_file(cfg, path)  # a broken file fails here, not mid-run
            digest.update(f"{split}/{cfg.classes[label]}/{path.name}:".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        counts[split] = len(files)
    return counts, {"folder": str(cfg.path), "classes": list(cfg.classes), "sha256": digest.hexdigest(),
                    modality.plural: counts}


def _check_alignment_sizes(config, modality: Modality, counts: dict[str, int] | None) -> None:
    """The map settings are valid, and the maps are fitted on ``min(train examples,
    align.num_train)`` pairs in batches of ``align.map.batch_size``: a trained kind needs at least
    one batch (and the suggested size divides ``align.map.memory_size``, as the maps require)."""
    align, cfg, sec = config.align, config[modality.section], modality.section
    for kind in align.map_kinds:
        try:
            MapTrainConfig(**{**align.map.to_dict(), "kind": kind})
        except (TypeError, ValueError) as e:
            raise ValueError(f"align.map (align.map_kinds {kind!r}): {e}") from None
    trained = [k for k in align.map_kinds if k in TRAINED_KINDS]
    bounds = {f"{sec}.num.train={cfg.num.train}": int(cfg.num.train),
              f"align.num_train={align.num_train}": int(align.num_train)}
    if counts is not None:
        bounds[f"the folder's train split holds {counts['train']} {modality.plural}"] = counts["train"]
    pairs = min(bounds.values())
    if trained and pairs < int(align.map.batch_size):
        memory = int(align.map.memory_size)
        fits = max(b for b in range(1, max(pairs, 1) + 1) if memory % b == 0)
        raise ValueError(
            f"alignment fits its {', '.join(trained)} maps on {pairs} train pairs "
            f"({'; '.join(bounds)}), fewer than one batch of align.map.batch_size="
            f"{align.map.batch_size}: set --config.align.map.batch_size={fits} (the largest size up to "
            f"{pairs} that divides align.map.memory_size={memory}), or add {modality.plural}")
    if counts is not None and min(counts["test"], int(align.num_test)) < 2:
        raise ValueError(f"alignment scores its maps on test pairs: the test split gives "
                         f"{counts['test']} (align.num_test={align.num_test}); it needs 2 or more")


def _check_caption_coverage(cap, captions: Sequence[str], labels: dict, parts: dict) -> None:
    """Identification needs every value of a family named by some train caption, steering and
    patching some test caption naming the family."""
    where = (f"captions (TFDS {cap.name} {cap.split}" if cap.source == "tfds"
             else f"captions (file {cap.path}") + f": {len(captions)}, {len(parts['train'])} in train)"
    for family, values in cap.families.items():
        train = labels[family][parts["train"]]
        missing = [v for k, v in enumerate(values) if not np.any(train == k)]
        if missing:
            raise ValueError(
                f"{where}: no train caption names {missing} of family {family!r}; every value needs "
                f"one. Set captions.families.{family} to words the captions use (a caption names a "
                f"value when it holds exactly one of the family's words), or add captions "
                f"(captions.limit={cap.limit})")
        if not np.any(labels[family][parts["test"]] >= 0):
            raise ValueError(f"{where}: no test caption names a value of family {family!r} "
                             f"({list(values)}); add captions or change captions.families.{family}")


def describe(cfg, modality: Modality, counts: dict[str, int] | None = None) -> str:
    """The labelled data in words; with ``counts``, the number of examples each split gave."""
    where, names = (f"TFDS {cfg.name}", cfg.splits) if cfg.source == "tfds" else (f"folder {cfg.path}", cfg.folders)
    splits = ", ".join(f"{s} `{names[s]!s}` ({counts[s]} {modality.plural})" if counts else
                       f"{s} `{names[s]!s}` (at most {cfg.num[s]})" for s in SPLITS)
    return f"{where}: {splits}; family {cfg.family!r} = {len(cfg.classes)} classes ({', '.join(cfg.classes)})"


def describe_captions(cfg, count: int | None = None) -> str:
    where = f"TFDS {cfg.name} {cfg.split}" if cfg.source == "tfds" else f"file {cfg.path}"
    fams = "; ".join(f"{f}: {', '.join(v)}" for f, v in cfg.families.items())
    size = f"{count} captions" if count is not None else f"at most {cfg.limit} captions"
    return f"{where}, {size}; families {fams}"
