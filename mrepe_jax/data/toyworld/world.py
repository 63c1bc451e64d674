"""ToyWorld: a procedural tri-modal world with known ground truth (DESIGN.md section 5).

Every sample has one value per concept family (``CONCEPT_FAMILIES``) and is rendered as an
image, a caption and an audio clip that all encode the same labels. A sample is a pure function
of ``(config.seed, split, index)``: labels and label-independent nuisance are drawn from
per-index seed streams (``sampling``), then rendered by vectorised numpy code
(``image``, ``sound``, ``text``).

    world = ToyWorld(ToyWorldConfig(seed=0))
    batch = world.batch(range(256), split="train")
    batch["image"].shape, batch["audio"].shape, batch["input_ids"].shape
    # ((256, 32, 32, 3), (256, 4000), (256, 16))

Difficulty knobs (all off by default; the default world is byte-for-byte the one without them)
make a ``hard`` world in which methods can differ: a spurious correlation between two families
in the train split only, caption noise in the train split only, and distractor objects in every
split. Labels are always the ground truth of the image and the audio (the main object); in a
noisy train split the caption may name another value. See ``ToyWorldConfig``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from mrepe_jax.data.toyworld import values as toyworld_values
from mrepe_jax.data.toyworld.concepts import (
    CONCEPT_FAMILIES,
    FAMILIES,
    SAFE_COUNTERPART,
    UNSAFE_FAMILY,
    family_values,
    value_index,
)
from mrepe_jax.data.toyworld.image import render_images, render_masks
from mrepe_jax.data.toyworld.sampling import (
    apply_spurious,
    draw_caption_shifts,
    draw_distractors,
    draw_labels,
    draw_nuisance,
    split_id,
    take_rows,
)
from mrepe_jax.data.toyworld.sound import MIN_SAMPLE_RATE, render_audio
from mrepe_jax.data.toyworld.text import class_prompts, max_template_words, render_captions
from mrepe_jax.data.toyworld.tokenizer import ToyTokenizer

Batch = dict[str, Any]
_RENDER_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class ToyWorldConfig:
    """ToyWorld's knobs; the concept tables themselves are constants (``concepts``).

    Attributes:
      seed: world seed; with the split and the index it determines every sample.
      image_size: images are float32 RGB in [0, 1], [image_size, image_size, 3].
      sample_rate: audio sample rate in Hz (>= 8000 so the emblem band fits below Nyquist).
      clip_seconds: audio clip length; clips have ``round(sample_rate * clip_seconds)`` samples.
      max_len: token length of ``input_ids`` including BOS and EOS.
      spurious: in the train split only, the probability that a sample's ``spurious_pair[1]``
        value is set by its ``spurious_pair[0]`` value, ``target = source % n_target_values``
        (default pair: red -> circle, green -> square, blue -> triangle, yellow -> circle).
        Validation and test keep the families independent, so a shortcut learnt in training
        shows up as an error there. The labels are the changed (true) ones.
      spurious_pair: ``(source, target)`` families of ``spurious``; the target may not be the
        unsafe family (value-conditioned sets for VAS are read off unconditioned labels).
      caption_noise: in the train split only, the probability per family slot that a caption
        names a wrong value of that family (uniform over the others). Labels stay the truth of
        the image and the audio, so train captions may disagree with them; other splits never.
      distractors: extra objects (``0..MAX_DISTRACTORS``) in every sample of every split: smaller
        shapes of random colour and shape drawn away from the main object, and quieter, shorter
        tones of their colour (pitch) and shape (timbre). Labels describe the main object.
    """

    seed: int = 0
    image_size: int = 32
    sample_rate: int = 8000
    clip_seconds: float = 0.5
    max_len: int = 16
    spurious: float = 0.0
    spurious_pair: tuple[str, str] = ("colour", "shape")
    caption_noise: float = 0.0
    distractors: int = 0

    def __post_init__(self):
        # Configs arrive from ml_collections/JSON with lists; keep the dataclass hashable.
        if isinstance(self.spurious_pair, list):
            object.__setattr__(self, "spurious_pair", tuple(self.spurious_pair))
        _check_knobs(self)
        if self.seed < 0:
            raise ValueError(f"ToyWorldConfig.seed must be >= 0, got {self.seed}")
        if self.image_size < 24:
            raise ValueError(f"ToyWorldConfig.image_size must be >= 24 to draw concepts apart, "
                             f"got {self.image_size}")
        if self.sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(f"ToyWorldConfig.sample_rate must be >= {MIN_SAMPLE_RATE}, "
                             f"got {self.sample_rate}")
        if self.clip_seconds < 0.25:
            raise ValueError(f"ToyWorldConfig.clip_seconds must be >= 0.25, got {self.clip_seconds}")
        need = max_template_words() + 2
        if self.max_len < need:
            raise ValueError(f"ToyWorldConfig.max_len must be >= {need} (longest template plus "
                             f"BOS/EOS) so captions keep every concept, got {self.max_len}")

    @property
    def n_audio(self) -> int:
        """Samples per audio clip."""
        return int(round(self.sample_rate * self.clip_seconds))


MAX_DISTRACTORS = 4  # more would crowd a 32x32 image's free area


def _check_probability(name: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"ToyWorldConfig.{name} must be a probability in [0, 1], got {p!r}")


def _check_knobs(cfg: ToyWorldConfig) -> None:
    _check_probability("spurious", cfg.spurious)
    _check_probability("caption_noise", cfg.caption_noise)
    pair = cfg.spurious_pair
    if (not isinstance(pair, tuple) or len(pair) != 2 or pair[0] == pair[1]
            or any(f not in FAMILIES for f in pair)):
        raise ValueError(f"ToyWorldConfig.spurious_pair must be two different families of "
                         f"{FAMILIES}, got {pair!r}")
    if pair[1] == UNSAFE_FAMILY:
        raise ValueError(f"ToyWorldConfig.spurious_pair cannot target the unsafe family "
                         f"{UNSAFE_FAMILY!r} (VAS's value-conditioned sets assume its labels are "
                         f"unconditioned); got {pair!r}")
    d = cfg.distractors
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d <= MAX_DISTRACTORS:
        raise ValueError(f"ToyWorldConfig.distractors must be an int in [0, {MAX_DISTRACTORS}], "
                         f"got {d!r}")


class ContrastPairs(NamedTuple):
    """Two batches identical in every label and nuisance draw except ``family``."""

    pos: Batch
    neg: Batch
    family: str
    pos_values: np.ndarray  # int32 [n], value index of ``family`` in ``pos``
    neg_values: np.ndarray  # int32 [n]


class ToyWorld:
    """Generator for ToyWorld samples, contrast pairs, zero-shot prompts and value-test sets."""

    def __init__(self, config: ToyWorldConfig = ToyWorldConfig()):
        self.config = config
        self.tokenizer = ToyTokenizer()

    @property
    def families(self) -> Mapping[str, tuple[str, ...]]:
        return CONCEPT_FAMILIES

    # ---- core: labels + nuisance -> batch (pure) ----

    def render(self, labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray]) -> Batch:
        """Render a batch from explicit labels ``{family: int[B]}`` and nuisance draws."""
        labels = {f: np.asarray(labels[f], np.int32) for f in FAMILIES}
        rows = np.arange(len(labels[FAMILIES[0]]))
        return _concat([self._render(take_rows(labels, r), take_rows(nuisance, r))
                        for r in _chunks(rows)])

    def _render(self, labels: dict[str, np.ndarray], nuisance: Mapping[str, np.ndarray]) -> Batch:
        cfg = self.config
        captions = render_captions(labels, nuisance, max_words=cfg.max_len - 2)
        input_ids, attention_mask = self.tokenizer.encode(captions, cfg.max_len)
        return {
            "image": render_images(labels, nuisance, cfg.image_size),
            "audio": render_audio(labels, nuisance, cfg.sample_rate, cfg.n_audio),
            "caption": captions,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
        }

    def labels(self, indices: Sequence[int], split: str = "train") -> dict[str, np.ndarray]:
        """Labels of samples without rendering them: ``{family: int32[B]}`` (the ground truth of
        image and audio; with ``spurious`` the train split's are correlated)."""
        cfg, idx = self.config, _as_index_list(indices)
        labels = draw_labels(cfg.seed, split, idx)
        if cfg.spurious > 0 and split == "train":
            labels = apply_spurious(cfg.seed, split, idx, labels, cfg.spurious, cfg.spurious_pair)
        return labels

    def _nuisance(self, indices: list[int], split: str) -> dict[str, np.ndarray]:
        cfg = self.config
        out = draw_nuisance(cfg.seed, split, indices, cfg.image_size, cfg.n_audio)
        # Knob draws join the nuisance only when on, so ``render`` stays a function of
        # (labels, nuisance) and a contrast pair shares them like any other nuisance.
        if cfg.caption_noise > 0 and split == "train":
            out.update(draw_caption_shifts(cfg.seed, split, indices, cfg.caption_noise))
        if cfg.distractors > 0:
            out.update(draw_distractors(cfg.seed, split, indices, cfg.distractors))
        return out

    def batch(self, indices: Sequence[int], split: str = "train") -> Batch:
        """Samples ``indices`` of ``split`` as one batch (see ``render`` for the keys)."""
        idx = np.asarray(_as_index_list(indices), np.int64)
        out = _concat([self._render(self.labels(c, split), self._nuisance(c.tolist(), split))
                       for c in _chunks(idx)])
        out["index"] = idx
        return out

    def masks(self, indices: Sequence[int], split: str = "train") -> np.ndarray:
        """The main object's pixels in the images ``batch(indices, split)`` renders, bool
        ``[B, H, W]`` (``image.render_masks``; distractors and the emblem are not the object)."""
        idx = _as_index_list(indices)
        return render_masks(self.labels(idx, split), self._nuisance(idx, split), self.config.image_size)

    def sample(self, index: int, split: str = "train") -> Batch:
        """One sample, without the batch axis (``caption`` is a str, labels are ints)."""
        b = self.batch([index], split)
        out = {k: (v[0] if k != "labels" else {f: int(x[0]) for f, x in v.items()})
               for k, v in b.items()}
        return out

    # ---- derived data sets ----

    def class_prompts(self, family: str) -> list[str]:
        """One text prompt per value of ``family`` (for zero-shot classification)."""
        return class_prompts(family)

    def contrast_pairs(self, family: str, n: int, split: str = "train", seed: int = 0,
                       pos_value: str | int | None = None,
                       neg_value: str | int | None = None) -> ContrastPairs:
        """``n`` pairs of samples that differ only in ``family``.

        Each pair starts from a random base sample of ``split`` (its labels and all its nuisance:
        jitter, noise, caption template and synonyms, distractors) and sets ``family`` to
        ``pos_value`` in ``pos`` and ``neg_value`` in ``neg``. Unset values are drawn per pair,
        distinct; for the unsafe family the defaults are an unsafe emblem vs its safe counterpart.

        In a train split with ``caption_noise`` the captions keep the base sample's (possibly
        wrong) words for the other families, identical in ``pos`` and ``neg``, but name
        ``family`` truthfully: the pair's contrast is exactly ``pos_values`` vs ``neg_values``.
        """
        values = family_values(family)
        if n < 1:
            raise ValueError(f"contrast_pairs needs n >= 1, got {n}")
        rng = np.random.default_rng(
            np.random.SeedSequence([self.config.seed, split_id(split), 0xC0A7, seed]))
        base = rng.integers(0, 2**31 - 1, size=n).tolist()
        pos_v, neg_v = _pair_values(family, values, n, rng, pos_value, neg_value)
        labels = self.labels(base, split)
        nuisance = _truthful_captions(self._nuisance(base, split), [family])
        pos_labels = {**labels, family: pos_v}
        neg_labels = {**labels, family: neg_v}
        pos, neg = self.render(pos_labels, nuisance), self.render(neg_labels, nuisance)
        pos["index"] = neg["index"] = np.asarray(base, np.int64)
        return ContrastPairs(pos, neg, family, pos_v, neg_v)

    def value_conditioned_indices(self, value: str, n: int, split: str = "test",
                                  start: int = 0) -> np.ndarray:
        """``n`` indices of ``split`` whose samples are drawn from ``p(x|value)`` (VAS, eq 9)."""
        return toyworld_values.value_conditioned_indices(self.config.seed, value, n, split, start)

    def counterfactual(self, batch_indices: Sequence[int], split: str,
                       overrides: Mapping[str, str | int]) -> Batch:
        """Samples ``batch_indices`` re-rendered with some families forced to given values
        (captions name the forced values truthfully, as in ``contrast_pairs``)."""
        idx = _as_index_list(batch_indices)
        labels = self.labels(idx, split)
        for family, value in overrides.items():
            labels[family] = np.full(len(idx), value_index(family, value), np.int32)
        out = self.render(labels, _truthful_captions(self._nuisance(idx, split), overrides))
        out["index"] = np.asarray(idx, np.int64)
        return out


def _truthful_captions(nuisance: dict[str, np.ndarray], families) -> dict[str, np.ndarray]:
    """``nuisance`` without caption noise on ``families``: values set on purpose are named."""
    for family in families:
        nuisance.pop(f"caption_shift_{family}", None)
    return nuisance


def _chunks(rows: np.ndarray) -> list[np.ndarray]:
    # Rendering holds several float64 [B, N] temporaries and the nuisance noise is ~11k floats per
    # sample; fixed-size chunks bound memory for large batches (B=16k would need gigabytes).
    return [rows[lo:lo + _RENDER_CHUNK] for lo in range(0, max(len(rows), 1), _RENDER_CHUNK)]


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    out: Batch = {k: np.concatenate([p[k] for p in parts])
                  for k in ("image", "audio", "input_ids", "attention_mask")}
    out["caption"] = [c for p in parts for c in p["caption"]]
    out["labels"] = {f: np.concatenate([p["labels"][f] for p in parts]) for f in FAMILIES}
    return out


def _as_index_list(indices: Sequence[int]) -> list[int]:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape}")
    if idx.size and idx.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    return [int(i) for i in idx]


def _pair_values(family, values, n, rng, pos_value, neg_value):
    k = len(values)
    if family == UNSAFE_FAMILY and pos_value is None and neg_value is None:
        unsafe = [values.index(u) for u in SAFE_COUNTERPART]
        pos = np.asarray(unsafe, np.int32)[rng.integers(len(unsafe), size=n)]
        neg = np.asarray([values.index(SAFE_COUNTERPART[values[p]]) for p in pos], np.int32)
        return pos, neg
    pos = (np.full(n, value_index(family, pos_value), np.int32) if pos_value is not None
           else rng.integers(k, size=n).astype(np.int32))
    if neg_value is not None:
        neg = np.full(n, value_index(family, neg_value), np.int32)
    else:  # a uniformly random value different from pos
        neg = ((pos + rng.integers(1, k, size=n)) % k).astype(np.int32)
    if np.any(pos == neg):
        raise ValueError(f"pos_value and neg_value of family {family!r} must differ, "
                         f"got {pos_value!r} and {neg_value!r}")
    return pos, neg
