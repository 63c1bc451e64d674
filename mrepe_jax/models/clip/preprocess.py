"""CLIP image preprocessing and tokenizer loading from a checkpoint directory's own files.

Images: ``preprocess_images`` reproduces transformers' ``CLIPImageProcessor`` (its PIL backend)
step for step, so a converted checkpoint sees the pixels it was trained on:

1. convert to RGB, compositing any transparency onto white (as HF's ``convert_to_rgb`` does);
2. resize with PIL so the shortest edge is ``size`` (long edge ``int(size * long / short)``,
   truncated, not rounded, like HF), on the uint8 image so PIL rounds to uint8 as in HF;
3. centre crop to ``crop_size`` (zero padding if the image is smaller, top/left offset floored);
4. rescale ``uint8 * rescale_factor`` in float64, then cast to float32;
5. normalise ``(x - mean) / std`` in float32.

The result is NHWC float32, which is what ``CLIPModel`` takes (HF's ``pixel_values`` are NCHW).
Other families whose processors run the same steps (BLIP's: an exact ``{height, width}`` resize and
no crop) subclass ``ImagePreprocessConfig`` with their own defaults (see ``models.blip2.preprocess``).

Text: ``load_tokenizer`` builds the checkpoint's own tokenizer with ``local_files_only=True``
(never a download), and ``tokenize`` returns padded ``int32`` numpy ``input_ids`` and
``attention_mask``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from mrepe_jax.data.source_base import to_rgb_uint8

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers 5's ``ProcessorMixin.save_pretrained`` writes no preprocessor_config.json: the image
# processor's settings sit under the "image_processor" key of processor_config.json instead.
PROCESSOR_CONFIG = "processor_config.json"
# What a directory must hold for ``load_tokenizer``: a ``tokenizers`` serialization, or CLIP's BPE
# pair (``vocab.json`` + ``merges.txt``).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImagePreprocessConfig:
    """CLIP's image preprocessing; defaults are OpenAI CLIP ViT-B/32's ``preprocessor_config.json``.

    ``size`` is the target shortest edge (an int), or an exact ``(height, width)`` resize (configs
    whose ``size`` is ``{"height", "width"}``). ``resample`` is a PIL filter id (3 = bicubic).

    Subclasses for other processor families override the field defaults (what HF uses for keys a
    config leaves out) and the two class variables below.
    """

    # How a bare int ``size`` in a config reads: HF's ``get_size_dict(size, default_to_square)``
    # makes it a shortest edge for CLIP and a square ``(size, size)`` for BLIP.
    DEFAULT_TO_SQUARE: ClassVar[bool] = False
    # The ``image_processor_type`` that ``to_hf_dict`` writes.
    HF_PROCESSOR_TYPE: ClassVar[str] = "CLIPImageProcessor"

    size: int | tuple[int, int] = 224
    crop_size: tuple[int, int] = (224, 224)
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True
    resample: int = 3

    def __post_init__(self):
        # Normalise list-valued fields (as read from JSON) so configs compare and hash equal.
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            value = (float(value),) * 3 if np.isscalar(value) else tuple(float(v) for v in value)
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (one per RGB channel), got {value}")
            object.__setattr__(self, name, value)
        if not isinstance(self.size, int):
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "crop_size", tuple(int(s) for s in self.crop_size))
        object.__setattr__(self, "resample", int(self.resample))

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ImagePreprocessConfig:
        """Builds a config from a transformers ``preprocessor_config.json`` dict.

        ``source`` names where ``d`` came from, for error messages.
        """
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        kwargs: dict[str, Any] = {}
        try:
            if "size" in d:
                kwargs["size"] = _parse_size(d["size"], cls.DEFAULT_TO_SQUARE)
            if d.get("crop_size") is not None:
                crop = _parse_size(d["crop_size"], True)
                kwargs["crop_size"] = (crop, crop) if isinstance(crop, int) else crop
            for key in ("image_mean", "image_std", "rescale_factor", "resample", "do_resize",
                        "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
                if key in d and d[key] is not None:
                    kwargs[key] = d[key]
            return cls(**kwargs)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{source}: malformed preprocessor config: {e}") from None

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ImagePreprocessConfig:
        """Reads ``<path>/preprocessor_config.json`` (HF format), or else the ``image_processor``
        entry of ``<path>/processor_config.json`` (what transformers 5 saves)."""
        return cls.from_hf_dict(*processor_config(path, "image_processor"))

    def to_hf_dict(self) -> dict[str, Any]:
        """The inverse of ``from_hf_dict``, in the layout transformers writes."""
        size = (
            {"shortest_edge": self.size}
            if isinstance(self.size, int)
            else {"height": self.size[0], "width": self.size[1]}
        )
        return {
            "image_processor_type": self.HF_PROCESSOR_TYPE,
            "size": size,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor,
            "resample": self.resample,
            "do_resize": self.do_resize,
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
            "do_convert_rgb": self.do_convert_rgb,
        }

    def to_dir(self, path: str | os.PathLike) -> str:
        """Writes ``<path>/preprocessor_config.json``; returns the file's path."""
        os.makedirs(path, exist_ok=True)
        file = os.path.join(os.fspath(path), PREPROCESSOR_CONFIG)
        with open(file, "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2)
        return file


def processor_config(path: str | os.PathLike, entry: str) -> tuple[dict, str]:
    """``(settings, source)`` of a checkpoint's preprocessing: ``<path>/preprocessor_config.json``,
    or else the ``entry`` (``image_processor``, ``feature_extractor``) of
    ``<path>/processor_config.json``, where transformers 5's processors save it. ``source`` names
    where they came from, for errors."""
    path = os.fspath(path)
    file = os.path.join(path, PREPROCESSOR_CONFIG)
    if os.path.isfile(file):
        return read_json(file), file
    processor_file = os.path.join(path, PROCESSOR_CONFIG)
    if os.path.isfile(processor_file):
        nested = read_json(processor_file).get(entry)
        if nested is not None:
            return nested, f"{processor_file}['{entry}']"
    raise FileNotFoundError(
        f"no {PREPROCESSOR_CONFIG} in {path!r} (looked for {file!r}, and for an {entry!r} entry in "
        f"{PROCESSOR_CONFIG}, where transformers 5 saves it)")


def read_json(file: str) -> Any:
    """A JSON file's content; a malformed file is a ``ValueError`` naming it."""
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON: {e}") from None


def _parse_size(size, default_to_square: bool = False) -> int | tuple[int, int]:
    """HF size: an int, ``{"shortest_edge": n}`` or ``{"height": h, "width": w}``.

    A bare int is a shortest edge, or ``(size, size)`` when ``default_to_square`` (as HF's
    ``get_size_dict``)."""
    if isinstance(size, bool):
        raise ValueError(f"size {size!r} is not an int or a size dict")
    if isinstance(size, int):
        return (size, size) if default_to_square else size
    if isinstance(size, dict):
        if size.get("shortest_edge") is not None:
            if size.get("longest_edge") is not None:
                raise ValueError(f"size {size} with 'longest_edge' is not supported")
            return int(size["shortest_edge"])
        if size.get("height") is not None and size.get("width") is not None:
            return int(size["height"]), int(size["width"])
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(
        f"size {size!r} is not an int, {{'shortest_edge': n}} or {{'height': h, 'width': w}}"
    )


def _resize_hw(h: int, w: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """HF's ``get_resize_output_image_size(default_to_square=False)``: the long edge truncates."""
    if not isinstance(size, int):
        return size
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def _center_crop(x: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
    """HF's ``center_crop`` on ``[H, W, C]``: floor offsets, zero-pad when the image is smaller."""
    h, w = x.shape[:2]
    ch, cw = crop_hw
    if ch > h or cw > w:
        nh, nw = max(ch, h), max(cw, w)
        top, left = -(-(nh - h) // 2), -(-(nw - w) // 2)  # ceil, as HF pads
        padded = np.zeros((nh, nw) + x.shape[2:], x.dtype)
        padded[top : top + h, left : left + w] = x
        x, h, w = padded, nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def preprocess_image(image, cfg: ImagePreprocessConfig, index: int = 0) -> np.ndarray:
    """One image -> ``[H, W, 3]`` float32 (see the module docstring for the steps)."""
    if cfg.do_convert_rgb:
        x = to_rgb_uint8(image, index)
    else:
        x = np.asarray(image)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(
                f"image {index}: do_convert_rgb is off, so images must already be HW3, got shape "
                f"{x.shape}"
            )
    if cfg.do_resize:
        h, w = _resize_hw(x.shape[0], x.shape[1], cfg.size)
        # Resizing the uint8 image (not floats) matches HF, whose PIL path resizes uint8 too.
        x = np.asarray(Image.fromarray(x).resize((w, h), resample=cfg.resample))
    if cfg.do_center_crop:
        x = _center_crop(x, cfg.crop_size)
    if cfg.do_rescale:
        # HF multiplies in float64 and casts to float32 afterwards; so do we, bit for bit.
        x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        x = x.astype(np.float32)
    if cfg.do_normalize:
        mean = np.asarray(cfg.image_mean, np.float32)
        std = np.asarray(cfg.image_std, np.float32)
        x = (x - mean) / std
    return x


def preprocess_images(images, cfg: ImagePreprocessConfig | None = None) -> np.ndarray:
    """Images (PIL images or uint8 HWC arrays, or one of them) -> ``[B, H, W, 3]`` float32 NHWC."""
    cfg = ImagePreprocessConfig() if cfg is None else cfg
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    if len(images) == 0:
        raise ValueError("preprocess_images got no images")
    out = [preprocess_image(im, cfg, i) for i, im in enumerate(images)]
    shapes = {x.shape for x in out}
    if len(shapes) > 1:
        raise ValueError(
            f"preprocessed images have different shapes {sorted(shapes)}; enable do_center_crop "
            "(or an exact (height, width) size) so they can be batched"
        )
    return np.stack(out)


def load_tokenizer(path: str | os.PathLike, fallback: Callable[[str], Any] | None = None):
    """The checkpoint's own tokenizer from directory ``path``, never downloading anything.

    Uses ``AutoTokenizer`` (so ``tokenizer_config.json``'s class wins) and falls back to
    ``fallback(path)`` for directories that hold only ``vocab.json`` + ``merges.txt`` (which
    ``AutoTokenizer`` cannot place); the default fallback is ``CLIPTokenizer``.
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"tokenizer directory {path!r} does not exist (looked for {', '.join(TOKENIZER_FILES)})"
        )
    has = {f: os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES}
    if not (has["tokenizer.json"] or (has["vocab.json"] and has["merges.txt"])):
        present = sorted(os.listdir(path))[:20]
        raise FileNotFoundError(
            f"no tokenizer files in {path!r}: looked for tokenizer.json, or vocab.json + merges.txt "
            f"(directory holds {present})"
        )
    fallback = _clip_tokenizer if fallback is None else fallback
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as auto_error:
        try:
            return fallback(path)
        except Exception as fallback_error:
            name = getattr(fallback, "__name__", repr(fallback))
            raise ValueError(
                f"could not build a tokenizer from {path!r}: AutoTokenizer said {auto_error!r}; "
                f"the fallback {name} said {fallback_error!r}"
            ) from fallback_error


def _clip_tokenizer(path: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(path, local_files_only=True)


def tokenize(
    tokenizer, texts: str | Sequence[str], max_length: int = 77, pad_to_max_length: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> ``(input_ids, attention_mask)``, both ``int32 [B, T]``.

    Pads to ``max_length`` by default (CLIP's text tower has 77 positions and was trained with
    fixed-length context; a fixed length also avoids recompiling a jitted forward per batch) or to
    the longest text with ``pad_to_max_length=False``. Longer texts are truncated; the tokenizer's
    post-processor still appends EOS, which CLIP's pooling needs.
    """
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max_length else "longest",
        max_length=max_length,
        truncation=True,
        return_tensors="np",
    )
    mask = enc.get("attention_mask")
    if mask is None:
        mask = np.ones_like(enc["input_ids"])
    return np.asarray(enc["input_ids"], np.int32), np.asarray(mask, np.int32)
