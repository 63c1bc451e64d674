"""The one data interface: ``DataSource.batches`` yields numpy batches keyed by modality.

A batch is a dict with any of

* ``"image"``: float32 [B, H, W, 3] in [0, 1],
* ``"caption"``: list[str] of length B,
* ``"input_ids"``, ``"attention_mask"``: int32 [B, L] (when the source has a tokenizer),
* ``"audio"``: float32 [B, N] mono waveforms in [-1, 1],
* ``"labels"``: ``{family: int32[B]}`` where the ground truth is known,
* ``"index"``: int64 [B], each example's position in its split, where the source has a stable
  order (for provenance).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

Batch = dict[str, Any]
#: Maps captions to ``(input_ids, attention_mask)``, e.g. ``lambda c: tok.encode(c, 16)``.
TokenizeFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


class DataSource(abc.ABC):
    """A finite, indexable collection of examples per split, read as numpy batches."""

    @abc.abstractmethod
    def batches(self, batch_size: int, *, split: str = "train", epochs: int | None = 1,
                seed: int = 0, shuffle: bool = True,
                drop_remainder: bool = False) -> Iterator[Batch]:
        """Yield batches of ``split``.

        Args:
          batch_size: examples per batch.
          split: which split to read.
          epochs: passes over the split; ``None`` repeats forever.
          seed: shuffling seed; epoch ``e`` uses order ``f(seed, e)``, so a run is reproducible.
          shuffle: shuffle the order each epoch (False: index order, e.g. for evaluation).
          drop_remainder: skip the last, smaller batch of each epoch (keeps shapes static).
        """


def epoch_orders(n: int, *, epochs: int | None, seed: int, shuffle: bool) -> Iterator[np.ndarray]:
    """Example orders for each epoch: a permutation from ``(seed, epoch)`` or ``arange(n)``."""
    if epochs is not None and epochs < 0:
        raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
    epoch = 0
    while epochs is None or epoch < epochs:
        if shuffle:
            yield np.random.default_rng([seed, epoch]).permutation(n)
        else:
            yield np.arange(n)
        epoch += 1


def chunk_order(order: np.ndarray, batch_size: int, drop_remainder: bool) -> Iterator[np.ndarray]:
    """Split one epoch's order into batches of indices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
    for lo in range(0, stop, batch_size):
        yield order[lo:lo + batch_size]


def import_tfds(user: str):
    """``tensorflow_datasets``, imported when ``user`` needs it (an optional dependency)."""
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as e:
        raise ImportError(f"{user} needs tensorflow_datasets (and tensorflow); install it with "
                          "pip install 'mrepe_jax[tfds]'") from e
    return tfds


def to_rgb_uint8(image, index: int = 0) -> np.ndarray:
    """One image (PIL, or a uint8 ``HW`` / ``HWC`` array with C in 1, 3, 4) -> ``[H, W, 3]`` uint8.

    Transparency is composited onto white, exactly as transformers' ``convert_to_rgb``: with
    ``PIL.Image.alpha_composite`` for PIL images, and ``round(a*rgb + (1-a)*255)`` for arrays.
    """
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"image {index}: arrays must be uint8 HWC, got dtype {image.dtype}; convert floats "
                "with (x * 255).round().astype(np.uint8) or pass a PIL image"
            )
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"image {index}: expected a HW or HWC array with 1, 3 or 4 channels (channels "
                f"last), got shape {image.shape}"
            )
        if image.shape[-1] == 1:
            return np.repeat(image, 3, axis=-1)
        if image.shape[-1] == 4:
            alpha = image[..., 3:4] / 255
            return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
        return image
    raise TypeError(
        f"image {index}: expected a PIL image or a uint8 numpy array, got {type(image).__name__}"
    )


def read_rgb(path) -> np.ndarray:
    """The image file at ``path`` as uint8 RGB ``[h, w, 3]`` (transparency on white, as
    ``to_rgb_uint8``), or an error naming the path. The whole file is decoded, so a truncated
    image fails here."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_uint8(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ValueError(f"could not read image {path}: {e}") from e


def check_nonempty(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what} has no examples")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8/float image [h, w(, c)] -> float32 [size, size, 3] in [0, 1].

    Resizes the short side to ``size`` (bicubic) and centre-crops, as CLIP preprocessing does;
    grey images are repeated to RGB and transparency is composited onto white
    (``to_rgb_uint8``).
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image [h, w, 1|3|4], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    arr = to_rgb_uint8(arr)
    h, w = arr.shape[:2]
    if (h, w) == (size, size):  # exact pixels for data that is already the right size
        return arr.astype(np.float32) / 255.0
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(arr).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, np.float32) / 255.0
