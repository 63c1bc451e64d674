"""Concept-labelled data from real datasets, streamed: labelled images (a TFDS classification
dataset such as ``cifar10``, or a folder of class subfolders) and captions whose words name a
concept family's values (TFDS ``coco_captions`` or a text file, one caption per line).

Images come out raw (``uint8 [h, w, 3]``, any size) so that the model's own preprocessing
(``models.clip.preprocess``) decides resizing and normalisation. Labels are indices into the
config's class list; a dataset class the config does not list is skipped.

    for images, labels in tfds_images("cifar10", "train[:5000]", ("cat", "dog"), batch_size=64):
        ...
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator, Sequence

import numpy as np

from mrepe_jax.data.source_base import import_tfds, read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def tfds_builder(tfds, name: str, data_dir: str | None):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError and others; all mean "no such dataset"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"TFDS has no dataset {name!r} (data_dir={data_dir!r}): {first}") from e


def tfds_load(tfds, name: str, split: str, data_dir: str | None, download: bool, **kw):
    try:
        return tfds.load(name, split=split, data_dir=data_dir, download=download,
                         shuffle_files=False, **kw)
    except Exception as e:  # not prepared offline, unknown split, ...: say which and where
        raise FileNotFoundError(f"could not read TFDS dataset {name!r} split {split!r} "
                                f"(data_dir={data_dir!r}, download={download}): {e}") from e


def class_index(classes: Sequence[str], dataset_classes: Sequence[str], where: str) -> np.ndarray:
    """``[len(dataset_classes)]``: each dataset class's index in ``classes``, -1 if not listed.
    Every listed class must be one of the dataset's (an error lists both)."""
    missing = [c for c in classes if c not in dataset_classes]
    if missing:
        raise ValueError(f"classes {missing} are not labels of {where}; its labels are "
                         f"{list(dataset_classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"the class list {list(classes)} repeats a class")
    return np.array([list(classes).index(c) if c in classes else -1 for c in dataset_classes])


def _batched(examples: Iterator[tuple[np.ndarray, int]], batch_size: int, limit: int | None,
             where: str) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    images, labels, seen = [], [], 0
    for image, label in examples:
        if limit is not None and seen >= limit:
            break
        images.append(image)
        labels.append(label)
        seen += 1
        if len(images) == batch_size:
            yield images, np.asarray(labels, np.int32)
            images, labels = [], []
    if images:
        yield images, np.asarray(labels, np.int32)
    if seen == 0:
        raise ValueError(f"{where} has no examples of the listed classes")


def tfds_images(name: str, split: str, classes: Sequence[str], *, batch_size: int,
                limit: int | None = None, label_key: str = "label", image_key: str = "image",
                data_dir: str | None = None, download: bool = True
                ) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """Batches ``(images, labels)`` of a TFDS classification dataset's ``split`` (TFDS split
    syntax, e.g. ``"train[:5000]"``), the first ``limit`` examples of the listed ``classes``."""
    tfds = import_tfds("TFDS concept data")
    builder = tfds_builder(tfds, name, data_dir)
    feature = builder.info.features[label_key] if label_key in builder.info.features else None
    if feature is None or not hasattr(feature, "names"):
        raise ValueError(f"TFDS dataset {name!r} has no class-label feature {label_key!r}; its "
                         f"features are {list(builder.info.features)}")
    names, where = list(feature.names), f"TFDS dataset {name!r} ({label_key!r})"
    if names == [str(i) for i in range(len(names))]:
        # TFDS knows the names only once the data is prepared (cifar10 reads them from its files):
        # before that, the config's list is taken as the names in label order.
        if len(classes) != len(names):
            raise ValueError(f"{where} has {len(names)} unnamed labels (0..{len(names) - 1}) here; "
                             f"list all {len(names)} class names in label order, not {list(classes)}")
        names = list(classes)
    index = class_index(classes, names, where)
    ds = tfds_load(tfds, name, split, data_dir, download)

    def examples():
        for ex in tfds.as_numpy(ds):
            label = int(index[int(ex[label_key])])
            if label >= 0:
                yield np.asarray(ex[image_key]), label

    return _batched(examples(), batch_size, limit, f"TFDS dataset {name!r} split {split!r}")


def folder_classes(root: str | pathlib.Path, split: str) -> list[str]:
    """The class subfolders of ``root/<split>``, sorted (an error names the folder looked in)."""
    split_dir = pathlib.Path(root).expanduser() / split
    if not split_dir.is_dir():
        what = "does not exist" if not pathlib.Path(root).expanduser().is_dir() else "has no split folder"
        raise FileNotFoundError(f"image folder {str(pathlib.Path(root))!r} {what} "
                                f"(looked for {str(split_dir)!r}, laid out as <split>/<class>/<image>)")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def folder_files(root: str | pathlib.Path, split: str, classes: Sequence[str],
                 limit: int | None = None) -> list[tuple[pathlib.Path, int]]:
    """``(path, label)`` of the images ``folder_images`` reads from ``root/<split>``, in its order:
    classes interleaved in file-name order, so that any prefix (``limit``) holds every class."""
    split_dir = pathlib.Path(root).expanduser() / split
    found = folder_classes(root, split)
    class_index(classes, found, f"image folder {str(split_dir)!r} (its class subfolders)")
    per_class = [sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                 for c in classes]
    empty = [c for c, files in zip(classes, per_class) if not files]
    if empty:
        raise ValueError(f"image folder {str(split_dir)!r}: class folder(s) {empty} hold no images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return list(_interleave(per_class))[:limit]


def folder_images(root: str | pathlib.Path, split: str, classes: Sequence[str], *, batch_size: int,
                  limit: int | None = None) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """Batches ``(images, labels)`` from ``root/<split>/<class>/*.png|jpg|...`` (the usual
    image-folder layout), in ``folder_files``' order."""
    order = folder_files(root, split, classes, limit)
    split_dir = pathlib.Path(root).expanduser() / split

    def examples():
        for path, label in order:
            yield read_rgb(path), label

    return _batched(examples(), batch_size, limit, f"image folder {str(split_dir)!r}")


def _interleave(per_class: list[list[pathlib.Path]]) -> Iterator[tuple[pathlib.Path, int]]:
    for i in range(max(len(f) for f in per_class)):
        for label, files in enumerate(per_class):
            if i < len(files):
                yield files[i], label


def word_labels(captions: Sequence[str], values: Sequence[str]) -> np.ndarray:
    """``[N]``: the index of the one value word each caption contains (whole words, any case),
    -1 when it contains none or several."""
    patterns = [re.compile(rf"\b{re.escape(v)}\b", re.IGNORECASE) for v in values]
    out = np.full(len(captions), -1, np.int32)
    for i, caption in enumerate(captions):
        hits = [k for k, p in enumerate(patterns) if p.search(caption)]
        if len(hits) == 1:
            out[i] = hits[0]
    return out


def swap_word(caption: str, old: str, new: str) -> str:
    """``caption`` with the whole word ``old`` (any case) replaced by ``new``."""
    return re.sub(rf"\b{re.escape(old)}\b", new, caption, flags=re.IGNORECASE)


def tfds_captions(name: str, split: str, *, limit: int | None = None, data_dir: str | None = None,
                  download: bool = True) -> list[str]:
    """The first caption of each of the first ``limit`` examples of a TFDS image-caption dataset
    (``coco_captions``: ``captions/text``), images left undecoded."""
    tfds = import_tfds("TFDS concept data")
    tfds_builder(tfds, name, data_dir)
    ds = tfds_load(tfds, name, split, data_dir, download,
               decoders={"image": tfds.decode.SkipDecoding()})
    if limit is not None:
        ds = ds.take(limit)
    out = []
    for ex in tfds.as_numpy(ds):
        text = ex["captions"]["text"] if "captions" in ex else ex.get("caption", ex.get("text"))
        if text is None:
            raise KeyError(f"TFDS dataset {name!r} examples have no caption field; keys: {sorted(ex)}")
        text = text[0] if np.ndim(text) else text
        out.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    if not out:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} has no captions")
    return out


def file_captions(path: str | pathlib.Path, *, limit: int | None = None) -> list[str]:
    """Captions from a text file, one per line (blank lines skipped)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"captions file {str(path)!r} holds no captions")
    return lines[:limit]
