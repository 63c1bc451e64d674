"""Images with their captions, streamed: TFDS ``coco_captions`` (or any TFDS image-caption set) or
a local folder of images indexed by a JSONL file, and concept labels read off the captions' words.

The captions are read first, without decoding a single image (``tfds_index`` / ``jsonl_index``),
so that a run can label, count and check its data before any model runs; the images are decoded
batch by batch afterwards (``tfds_images`` / ``folder_images``), in the same order, never all at
once. Images come out raw (``uint8 [h, w, 3]``, any size): the model's processor resizes them.

JSONL: one object per line, ``{"image": "rel/path.jpg", "captions": ["...", ...]}``, the path
relative to the image root (absolute paths are taken as they are)::

    {"image": "train/0001.jpg", "captions": ["a red bus on a street", "a bus parked by a kerb"]}

``caption_labels``: an image has value ``v`` of a concept family when its captions name ``v``
(a whole word, any case) and no other value of that family; otherwise it is unlabelled (-1).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from mrepe_jax.data.concepts import tfds_builder, tfds_load, word_labels
from mrepe_jax.data.source_base import import_tfds, read_rgb


@dataclasses.dataclass(frozen=True)
class Captioned:
    """One image's identity (``key``: the file for a folder, the example's position in its split
    for TFDS) and its captions."""

    key: str
    captions: tuple[str, ...]


def caption_labels(captions: Sequence[Sequence[str]], values: Sequence[str]) -> np.ndarray:
    """``[N]``: the value of ``values`` that image ``i``'s captions name, -1 if none or several
    (``concepts.word_labels`` over each image's captions taken together)."""
    return word_labels([" \n ".join(c) for c in captions], values)


def _texts(example: dict, name: str) -> tuple[str, ...]:
    if "captions" in example:
        text = example["captions"]["text"] if isinstance(example["captions"], dict) else example["captions"]
    else:
        text = example.get("caption", example.get("text"))
    if text is None:
        raise KeyError(f"TFDS dataset {name!r} examples have no caption field; keys: {sorted(example)}")
    text = np.atleast_1d(np.asarray(text, dtype=object))
    return tuple(t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in text)


def tfds_index(name: str, split: str, *, limit: int, data_dir: str | None = None,
               download: bool = True) -> list[Captioned]:
    """The captions of the first ``limit`` examples of a TFDS image-caption ``split``, images left
    undecoded. Keys are the examples' positions (``"0"``, ``"1"``, ...), which ``tfds_images``
    reads back in the same order."""
    tfds = import_tfds("TFDS image-caption data")
    tfds_builder(tfds, name, data_dir)
    ds = tfds_load(tfds, name, split, data_dir, download, decoders={"image": tfds.decode.SkipDecoding()})
    out = [Captioned(str(i), _texts(ex, name)) for i, ex in enumerate(tfds.as_numpy(ds.take(limit)))]
    if not out:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} has no examples")
    return out


def tfds_images(name: str, split: str, *, count: int, batch_size: int, data_dir: str | None = None,
                download: bool = True, image_key: str = "image") -> Iterator[list[np.ndarray]]:
    """Batches of the first ``count`` images of ``split``, decoded one batch at a time, in
    ``tfds_index``'s order."""
    tfds = import_tfds("TFDS image-caption data")
    ds = tfds_load(tfds, name, split, data_dir, download).take(count)
    batch = []
    for ex in tfds.as_numpy(ds):
        batch.append(np.asarray(ex[image_key]))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def jsonl_index(path: str | pathlib.Path, root: str | pathlib.Path | None = None) -> list[Captioned]:
    """The records of a captions JSONL file (module docstring), each image path resolved against
    ``root`` (default: the JSONL file's folder) and checked to exist. Errors name the file, the
    line and the problem."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist (a JSONL file: one "
                                '{"image": "rel/path.jpg", "captions": ["..."]} per line)')
    root = path.parent if root in (None, "") else pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            raise ValueError(f'{where}: each line must be an object with an "image" path (a string), got {line[:80]!r}')
        caps = rec.get("captions")
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            raise ValueError(f'{where}: "captions" must be a non-empty list of non-empty strings, got {caps!r}')
        image = root / rec["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {str(image)!r} does not exist")
        out.append(Captioned(str(image), tuple(c.strip() for c in caps)))
    if not out:
        raise ValueError(f"captions file {str(path)!r} holds no records")
    return out


def folder_images(records: Sequence[Captioned], *, batch_size: int) -> Iterator[list[np.ndarray]]:
    """Batches of the images ``records`` name (``jsonl_index``), decoded one batch at a time."""
    for lo in range(0, len(records), batch_size):
        yield [read_rgb(r.key) for r in records[lo:lo + batch_size]]
