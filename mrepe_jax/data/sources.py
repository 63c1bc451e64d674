"""Data sources behind one interface (``DataSource.batches``): ToyWorld, TFDS, a local folder.

    src = ToyWorldSource(ToyWorldConfig(seed=0), sizes={"train": 20_000, "test": 2_000})
    for batch in src.batches(256, split="train", epochs=None, seed=0):
        ...  # batch["image"], batch["audio"], batch["input_ids"], batch["labels"], ...

``TFDSSource`` imports tensorflow_datasets only when used (``pip install 'mrepe_jax[tfds]'``);
``FolderSource`` (``folder_source``) reads images, captions.jsonl and optional wav files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from mrepe_jax.data.folder_source import FolderSource
from mrepe_jax.data.source_base import (
    Batch,
    DataSource,
    TokenizeFn,
    check_nonempty,
    chunk_order,
    epoch_orders,
    import_tfds,
    resize_square,
)
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig

__all__ = ["DataSource", "ToyWorldSource", "TFDSSource", "FolderSource", "resize_square"]

DEFAULT_TOYWORLD_SIZES: Mapping[str, int] = {"train": 20_000, "test": 2_000, "validation": 2_000}


class ToyWorldSource(DataSource):
    """ToyWorld samples ``0 .. sizes[split] - 1`` of each split, rendered on the fly."""

    def __init__(self, config: ToyWorldConfig = ToyWorldConfig(),
                 sizes: Mapping[str, int] = DEFAULT_TOYWORLD_SIZES):
        self.world = ToyWorld(config)
        self.sizes = dict(sizes)

    @property
    def tokenizer(self):
        return self.world.tokenizer

    def size(self, split: str) -> int:
        if split not in self.sizes:
            raise ValueError(f"ToyWorldSource has no split {split!r}; sizes are {self.sizes}")
        return self.sizes[split]

    def batches(self, batch_size: int, *, split: str = "train", epochs: int | None = 1,
                seed: int = 0, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        n = self.size(split)
        check_nonempty(n, f"ToyWorldSource split {split!r}")
        if drop_remainder and n < batch_size:
            raise ValueError(f"split {split!r} has {n} examples < batch_size {batch_size} with "
                             f"drop_remainder=True: no batch would ever be produced")
        for order in epoch_orders(n, epochs=epochs, seed=seed, shuffle=shuffle):
            for idx in chunk_order(order, batch_size, drop_remainder):
                yield self.world.batch(idx, split)


def _first_caption(example: Mapping[str, Any]) -> str:
    """The caption of a TFDS example: coco_captions' ``captions/text[0]`` or a text field."""
    value: Any = None
    if "captions" in example:
        caps = example["captions"]
        value = caps["text"] if isinstance(caps, Mapping) else caps
        value = value[0] if len(value) else b""
    else:
        for key in ("caption", "text", "description"):
            if key in example:
                value = example[key]
                break
    if value is None:
        raise KeyError(f"TFDS example has no caption field; its keys are {sorted(example)}")
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TFDSSource(DataSource):
    """Image-caption pairs from a TensorFlow Datasets dataset (default ``coco_captions``).

    Images are resized and centre-cropped to ``image_size``; the caption is the first of the
    example's captions. Batches carry no ``index``: TFDS examples have no stable position once
    shuffled. ``split`` is passed to TFDS as it is (coco_captions has train / val /
    test / restval).
    """

    def __init__(self, name: str = "coco_captions", *, image_size: int = 224,
                 data_dir: str | None = None, download: bool = True,
                 tokenize: TokenizeFn | None = None, shuffle_buffer: int = 1_000):
        self.tfds = import_tfds("TFDSSource")
        self.name = name
        self.image_size = image_size
        self.data_dir = data_dir
        self.download = download
        self.tokenize = tokenize
        self.shuffle_buffer = shuffle_buffer

    def _dataset(self, split: str):
        try:
            return self.tfds.load(self.name, split=split, data_dir=self.data_dir,
                                  download=self.download, shuffle_files=False)
        except Exception as e:  # tfds raises many types; say which dataset and where
            raise RuntimeError(f"could not load TFDS dataset {self.name!r} split {split!r} "
                               f"(data_dir={self.data_dir!r}, download={self.download}): {e}") from e

    def _finish(self, images: list, captions: list[str]) -> Batch:
        out: Batch = {"image": np.stack(images), "caption": captions}
        if self.tokenize is not None:
            out["input_ids"], out["attention_mask"] = self.tokenize(captions)
        return out

    def batches(self, batch_size: int, *, split: str = "train", epochs: int | None = 1,
                seed: int = 0, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        epoch = 0
        while epochs is None or epoch < epochs:
            ds = self._dataset(split)
            if shuffle:  # per-epoch seed so that epochs differ but runs repeat
                ds = ds.shuffle(self.shuffle_buffer, seed=seed * 100_003 + epoch,
                                reshuffle_each_iteration=False)
            images, captions, produced = [], [], 0
            for example in self.tfds.as_numpy(ds):
                images.append(resize_square(example["image"], self.image_size))
                captions.append(_first_caption(example))
                if len(images) == batch_size:
                    yield self._finish(images, captions)
                    produced += 1
                    images, captions = [], []
            if images and not drop_remainder:
                yield self._finish(images, captions)
                produced += 1
            if produced == 0:
                raise ValueError(f"TFDS dataset {self.name!r} split {split!r} produced no batch "
                                 f"(batch_size={batch_size}, drop_remainder={drop_remainder})")
            epoch += 1
