"""The BLIP-2 experiment's data: images with their captions (TFDS ``coco_captions`` or a folder +
JSONL), labelled by the concept words their captions name, checked before any model runs.

``load(cfg)`` reads every split's captions, labels each image per family
(``data.captioned.caption_labels``) and refuses, naming the config field to change: a source it
cannot read, an image file that does not decode (a folder's images are each decoded once here;
TFDS images are not), concept words that no caption contains, and a family value with no image in a split
(Table 1 needs every value in train, validation and test). ``images(cfg, data, split, batch)``
then streams the same images, batch by batch, in the same order.

Splits: TFDS's own (``data.splits``, e.g. Karpathy's ``train`` / ``val`` / ``test`` of
``coco_captions``); a JSONL file's records by position (``i % 5``: 3 train / 1 validation /
1 test), as the CLIP experiment splits its captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import ml_collections
import numpy as np

from mrepe_jax.data import captioned
from mrepe_jax.data.source_base import read_rgb

SPLITS = ("train", "validation", "test")
SOURCES = ("tfds", "folder")


@dataclasses.dataclass
class Data:
    """Per split: the images' records (captions and identity) and their labels ``{family: [N]}``
    (value index, -1 unlabelled), and the data's fingerprint."""

    records: dict[str, list[captioned.Captioned]]
    labels: dict[str, dict[str, np.ndarray]]
    fingerprint: dict

    def counts(self) -> dict:
        """``{family: {split: labelled images}}``."""
        families = next(iter(self.labels.values()))
        return {f: {s: int((self.labels[s][f] >= 0).sum()) for s in SPLITS} for f in families}


def _split_records(cfg: ml_collections.ConfigDict) -> dict[str, list[captioned.Captioned]]:
    if cfg.source == "tfds":
        return {s: captioned.tfds_index(cfg.name, cfg.splits[s], limit=int(cfg.num[s]), data_dir=cfg.data_dir,
                                        download=cfg.download) for s in SPLITS}
    if not cfg.captions_file:
        raise ValueError("data.source is 'folder' but data.captions_file is empty: give the JSONL file "
                         '(one {"image": "rel/path.jpg", "captions": ["..."]} per line)')
    records = captioned.jsonl_index(cfg.captions_file, cfg.path or None)
    position = np.arange(len(records)) % 5
    rows = {"train": position < 3, "validation": position == 3, "test": position == 4}
    return {s: [r for r, keep in zip(records, rows[s]) if keep][:int(cfg.num[s])] for s in SPLITS}


def describe(cfg: ml_collections.ConfigDict) -> str:
    """Where the images and captions come from, in words."""
    if cfg.source == "tfds":
        return f"TFDS {cfg.name} (splits {', '.join(f'{s}: {cfg.splits[s]}' for s in SPLITS)})"
    root = cfg.path or "beside the JSONL file"
    return f"folder {root} with captions {cfg.captions_file} (JSONL; records split by position, 3:1:1)"


def concept_families(cfg: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    """``data.families`` less those listed empty (``--config.data.families.object=()`` drops one)."""
    out = {f: tuple(v) for f, v in cfg.families.items() if len(v)}
    if not out:
        raise ValueError("data.families lists no words: give some by family, e.g. "
                         "--config.data.families.colour=\"('red', 'blue')\"")
    return out


def load(cfg: ml_collections.ConfigDict) -> Data:
    """Every split's captions and labels (module docstring), or an error naming what to change."""
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source {cfg.source!r} is not one of {SOURCES}")
    families = concept_families(cfg)
    for f, values in families.items():
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"data.families.{f} must list two or more distinct words, got {list(values)}")
    records = _split_records(cfg)
    if cfg.source == "folder":
        # Every image a run will read is decoded once here, so that a truncated or unreadable file
        # stops it before the workdir is claimed, not halfway through a stage.
        for r in (r for s in SPLITS for r in records[s]):
            read_rgb(r.key)
    labels = {s: {f: captioned.caption_labels([r.captions for r in records[s]], v) for f, v in families.items()}
              for s in SPLITS}
    every = [c for s in SPLITS for r in records[s] for c in r.captions]
    named = {f: captioned.caption_labels([[c] for c in every], v) for f, v in families.items()}
    never = {f: [v for k, v in enumerate(values) if not np.any(named[f] == k)] for f, values in families.items()}
    never = {f: words for f, words in never.items() if words}
    if never:
        listed = "; ".join(f"{f}: {', '.join(w)}" for f, w in never.items())
        raise ValueError(f"no caption of the {sum(len(records[s]) for s in SPLITS)} images read names these "
                         f"concept words: {listed} ({describe(cfg)}); drop them from data.families or read "
                         "more images (data.num)")
    for s in SPLITS:
        for f, values in families.items():
            counts = np.bincount(labels[s][f][labels[s][f] >= 0], minlength=len(values))
            missing = [v for v, n in zip(values, counts) if n == 0]
            if missing:
                raise ValueError(
                    f"the {s} split has no image whose captions name {missing} (family {f!r}, "
                    f"{len(records[s])} images, labelled: {dict(zip(values, counts.tolist()))}); every "
                    f"value needs images in train, validation and test: raise data.num.{s} or drop the word")
    digest = hashlib.sha256()
    for s in SPLITS:
        for r in records[s]:
            digest.update(f"{s}\x00{r.key}\x00{chr(1).join(r.captions)}\x01".encode())
    fingerprint = {"source": describe(cfg), "images": {s: len(records[s]) for s in SPLITS},
                   "captions_sha256": digest.hexdigest()}
    return Data(records, labels, fingerprint)


def images(cfg: ml_collections.ConfigDict, data: Data, split: str, batch_size: int) -> Iterator[list[np.ndarray]]:
    """The images of ``split`` (those ``load`` read the captions of), batch by batch."""
    if cfg.source == "tfds":
        return captioned.tfds_images(cfg.name, cfg.splits[split], count=len(data.records[split]),
                                     batch_size=batch_size, data_dir=cfg.data_dir, download=cfg.download)
    return captioned.folder_images(data.records[split], batch_size=batch_size)
