"""BLIP-2 preprocessing from a checkpoint directory's own files: transformers' ``Blip2Processor``.

Images: ``BlipImageProcessor`` runs the same steps as CLIP's processor minus the crop, so this module
reuses ``models.clip.preprocess`` with BLIP's defaults (``BlipImageConfig``):

1. convert to RGB (transparency composited onto white);
2. resize the uint8 image with PIL to the fixed ``size`` ``(height, width)`` (aspect ratio not
   kept), with ``resample`` (3 = bicubic);
3. rescale ``uint8 * rescale_factor`` (float64, then float32);
4. normalise ``(x - mean) / std`` in float32.

We reproduce HF's PIL backend (``BlipImageProcessorPil``) bit for bit. transformers 5.24's
``AutoImageProcessor`` / ``Blip2Processor.from_pretrained`` pick the torchvision backend
(``BlipImageProcessor``) when torchvision is installed: it resizes with torchvision's antialiased
bicubic, whose rounding can differ from PIL's by a 1/255 level at some pixels (not measured here,
as this environment has no torchvision). Without torchvision HF uses the PIL backend we match.
The output is NHWC float32 (HF's ``pixel_values`` are NCHW).

Text, as ``Blip2Processor.__call__`` (transformers 5.24) with ``num_query_tokens`` set:

- the prompts are tokenised and padded *on their own*, with the tokenizer's special tokens (OPT's
  tokenizer prepends BOS ``</s>``, id 2; it appends no EOS);
- then ``num_query_tokens`` image tokens (``<image>``, id 50265 in ``Salesforce/blip2-opt-*``) are
  prepended to every row, in front of BOS and of any padding, with attention mask 1. The model
  overwrites their embeddings with the Q-Former's projected outputs.

Padding side: HF pads on ``tokenizer.padding_side``, which is ``"right"`` for the Salesforce
checkpoints (their tokenizer_config.json sets none), giving ``[<image>*N, BOS, text, <pad>...]``.
Batched generation appends tokens on the right, so it needs the padding on the left; HF's docs tell
users to set ``padding_side="left"``, which gives ``[<image>*N, <pad>..., BOS, text]`` (the pads sit
between the image tokens and BOS). We default to ``padding_side="left"`` and return exactly that HF
layout. It is correct for OPT because positions are ``cumsum(attention_mask) - 1`` and padded slots
are masked: every real token gets the position and the context it has unpadded, and the image tokens
stay at slots ``[0, N)`` of every row. ``padding_side="right"`` reproduces HF's default call.

Where the settings live: ``num_query_tokens`` in ``processor_config.json`` (``Salesforce/blip2-*``
hold ``{"num_query_tokens": 32, "processor_class": "Blip2Processor"}``); the image settings in
``preprocessor_config.json`` (or, as transformers 5 saves them, under ``"image_processor"`` in
``processor_config.json``); the ``<image>`` token as an added special token of the tokenizer files
(``added_tokens_decoder`` / ``tokenizer.json``). ``config.json``'s ``num_query_tokens`` and
``image_token_index``, when present, must agree with them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from mrepe_jax.models.clip.preprocess import (
    PROCESSOR_CONFIG,
    ImagePreprocessConfig,
    load_tokenizer,
    preprocess_images,
    read_json,
)

IMAGE_TOKEN = "<image>"
# OPT's special tokens, as facebook/opt-* and Salesforce/blip2-opt-* declare them in
# tokenizer_config.json; used only for a directory holding nothing but vocab.json + merges.txt.
OPT_SPECIAL_TOKENS = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                      "pad_token": "<pad>"}


@dataclasses.dataclass(frozen=True)
class BlipImageConfig(ImagePreprocessConfig):
    """``BlipImageProcessor``'s settings; the defaults are its class defaults (what HF uses for a key
    a ``preprocessor_config.json`` leaves out): 384x384 bicubic, OpenAI CLIP mean/std, no crop.
    A bare int ``size`` is a square, as BLIP's ``default_to_square=True``."""

    DEFAULT_TO_SQUARE: ClassVar[bool] = True
    HF_PROCESSOR_TYPE: ClassVar[str] = "BlipImageProcessor"

    size: int | tuple[int, int] = (384, 384)
    crop_size: tuple[int, int] = (384, 384)
    do_center_crop: bool = False


def _opt_gpt2_tokenizer(path: str):
    """A bare GPT-2 BPE pair from an OPT checkpoint: GPT2Tokenizer with OPT's special tokens, BOS
    prepended (OPT's ``add_bos_token``). Refuses a vocabulary without those tokens, rather than
    letting the tokenizer append them as new ids the model has no embeddings for."""
    from transformers import GPT2Tokenizer

    vocab = read_json(os.path.join(path, "vocab.json"))
    missing = sorted({t for t in OPT_SPECIAL_TOKENS.values() if t not in vocab})
    if missing:
        raise ValueError(
            f"{path}/vocab.json lacks OPT's special tokens {missing}; add the checkpoint's "
            "tokenizer_config.json (or tokenizer.json) so the tokenizer's own special tokens are used"
        )
    return GPT2Tokenizer.from_pretrained(path, local_files_only=True, add_bos_token=True,
                                         **OPT_SPECIAL_TOKENS)


def load_blip2_tokenizer(directory: str | os.PathLike):
    """The checkpoint's tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` with their
    ``tokenizer_config.json``), loaded with ``local_files_only=True``."""
    return load_tokenizer(directory, fallback=_opt_gpt2_tokenizer)


def image_token_id(tokenizer) -> int:
    """The id of the image placeholder token, registering it as ``Blip2Processor.__init__`` does.

    HF uses ``tokenizer.image_token`` when the tokenizer declares one, else ``<image>``, which it
    adds as a special token (``normalized=False``) when the vocabulary lacks it. Released BLIP-2
    tokenizers already hold it, so adding is a no-op for them; for one that lacks it the new id is
    ``len(tokenizer)``, exactly as HF's. (This mutates the given tokenizer, as HF's processor does.)
    """
    from transformers import AddedToken

    token = str(getattr(tokenizer, "image_token", None) or IMAGE_TOKEN)
    if token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(token, normalized=False, special=True)],
                             special_tokens=True)
    return int(tokenizer.convert_tokens_to_ids(token))


def _as_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i}: expected a string, got {type(p).__name__}")
    return list(prompts)


def tokenize_prompts(
    tokenizer,
    prompts: str | Sequence[str],
    num_query_tokens: int,
    image_token: int,
    padding_side: str = "left",
    max_length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> ``(input_ids, attention_mask)``, ``int32 [B, num_query_tokens + T]``, laid out as
    ``Blip2Processor(images=..., text=prompts, padding=True)`` lays them out (module docstring).

    ``padding_side`` is where each prompt's padding goes (``"left"`` for generation; HF's default
    is the tokenizer's, ``"right"`` for the Salesforce checkpoints). ``max_length`` (image tokens
    included) pads and truncates every row to that length, as HF's ``padding="max_length",
    truncation=True, max_length=...`` (HF too gives the prompt ``max_length - num_query_tokens``).
    """
    prompts = _as_prompts(prompts)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(num_query_tokens, bool) or not isinstance(num_query_tokens, int) \
            or num_query_tokens < 0:
        raise ValueError(f"num_query_tokens must be an int >= 0, got {num_query_tokens!r}")
    kwargs: dict[str, Any] = {"padding": "longest"}
    if max_length is not None:
        if max_length <= num_query_tokens:
            raise ValueError(f"max_length {max_length} leaves no room for a prompt after the "
                             f"{num_query_tokens} image tokens")
        kwargs = {"padding": "max_length", "truncation": True,
                  "max_length": max_length - num_query_tokens}
    # The prompts are padded among themselves first; the image tokens then go in front of every
    # row, so with left padding the pads sit between the image tokens and BOS, as in HF.
    enc = tokenizer(prompts, padding_side=padding_side, return_attention_mask=True,
                    return_token_type_ids=False, **kwargs)
    ids = np.asarray(enc["input_ids"], np.int32)
    mask = np.asarray(enc["attention_mask"], np.int32)
    b = ids.shape[0]
    ids = np.concatenate([np.full((b, num_query_tokens), image_token, np.int32), ids], axis=1)
    mask = np.concatenate([np.ones((b, num_query_tokens), np.int32), mask], axis=1)
    return ids, mask


def read_num_query_tokens(directory: str | os.PathLike) -> int:
    """``num_query_tokens`` from ``<directory>/processor_config.json``, the setting ``Blip2Processor``
    needs to expand the image tokens (without it HF adds none, and the model finds no slot for
    the Q-Former's outputs)."""
    directory = os.fspath(directory)
    file = os.path.join(directory, PROCESSOR_CONFIG)
    model_n = _model_config(directory).get("num_query_tokens")
    hint = (f'set "num_query_tokens": {model_n if model_n is not None else 32} in {file} (it must '
            "equal config.json's num_query_tokens; 32 for Salesforce/blip2-*), or pass "
            "num_query_tokens= explicitly")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {PROCESSOR_CONFIG} in {directory!r}: {hint}")
    n = read_json(file).get("num_query_tokens")
    if n is None:
        raise ValueError(f"{file} has no num_query_tokens: {hint}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{file}: num_query_tokens must be a positive int, got {n!r}")
    return n


def _model_config(directory: str) -> dict:
    file = os.path.join(directory, "config.json")
    return read_json(file) if os.path.isfile(file) else {}


@dataclasses.dataclass
class Blip2Preprocessor:
    """``Blip2Processor`` in numpy: images -> NHWC ``pixel_values``, prompts -> ``input_ids`` and
    ``attention_mask`` with the image tokens expanded. Build it once with ``from_dir``."""

    image_config: BlipImageConfig
    tokenizer: Any
    num_query_tokens: int
    image_token_id: int

    @classmethod
    def from_dir(cls, directory: str | os.PathLike,
                 num_query_tokens: int | None = None) -> Blip2Preprocessor:
        """Reads a checkpoint directory's processor files (never downloads). ``num_query_tokens``
        overrides ``processor_config.json``'s. A ``config.json`` beside them is cross-checked."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
        image_config = BlipImageConfig.from_dir(directory)
        tokenizer = load_blip2_tokenizer(directory)
        if num_query_tokens is None:
            num_query_tokens = read_num_query_tokens(directory)
        token_id = image_token_id(tokenizer)
        model = _model_config(directory)
        for key, ours in (("num_query_tokens", num_query_tokens),
                          ("image_token_index", token_id)):
            theirs = model.get(key)
            if theirs is None and key == "image_token_index":  # Blip2Config's alias
                theirs = model.get("image_token_id")
            if theirs is not None and theirs != ours:
                raise ValueError(f"{directory}/config.json has {key}={theirs}, but the processor "
                                 f"files give {ours}: the model would misplace the image tokens")
        return cls(image_config, tokenizer, num_query_tokens, token_id)

    def images(self, images) -> np.ndarray:
        """PIL images or uint8 HWC arrays (or one) -> ``[B, H, W, 3]`` float32."""
        return preprocess_images(images, self.image_config)

    def text(self, prompts, padding_side: str = "left",
             max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """See ``tokenize_prompts``."""
        return tokenize_prompts(self.tokenizer, prompts, self.num_query_tokens,
                                self.image_token_id, padding_side, max_length)

    def __call__(self, images, prompts=None, padding_side: str = "left",
                 max_length: int | None = None) -> dict[str, np.ndarray]:
        """One prompt per image; ``prompts=None`` gives every image the empty prompt, i.e.
        ``[<image>*N, BOS]``, the ids HF's ``generate`` builds when it gets no ``input_ids``."""
        pixel_values = self.images(images)
        if prompts is None:
            prompts = [""] * len(pixel_values)
        prompts = _as_prompts(prompts)
        if len(prompts) != len(pixel_values):
            raise ValueError(f"got {len(pixel_values)} images and {len(prompts)} prompts; BLIP-2 "
                             "takes one prompt per image")
        input_ids, attention_mask = self.text(prompts, padding_side, max_length)
        return {"pixel_values": pixel_values, "input_ids": input_ids,
                "attention_mask": attention_mask}


def process(images, prompts, directory: str | os.PathLike, padding_side: str = "left",
            max_length: int | None = None) -> dict[str, np.ndarray]:
    """``Blip2Processor(images, prompts)`` from ``directory``'s files in one call:
    ``{"pixel_values": [B, H, W, 3] float32, "input_ids", "attention_mask": int32 [B, N + T]}``.

    It reads the directory each call; to process many batches build ``Blip2Preprocessor.from_dir``
    once and call it.
    """
    return Blip2Preprocessor.from_dir(directory)(images, prompts, padding_side, max_length)
