"""Per-sample randomness for ToyWorld: labels and nuisance, each from its own seed stream.

A sample is a pure function of ``(labels, nuisance)``. Both are drawn from
``np.random.SeedSequence([seed, split_id, index, stream])`` so that

* any sample can be generated on its own from its index (no sequential state),
* splits never share a stream (``split_id`` differs),
* nuisance is drawn independently of the labels (``stream`` differs and a fixed number of
  numbers is drawn whatever the labels are), which is what lets a contrast pair change one
  concept while keeping every jitter and noise value identical.

The difficulty knobs of ``ToyWorldConfig`` (spurious correlation, caption noise, distractors)
draw from further streams of their own, only when they are on; the default world's draws are
exactly those of a world without knobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES, FAMILIES

SPLIT_IDS: Mapping[str, int] = {"train": 0, "test": 1, "validation": 2}
_LABEL_STREAM = 0
_NUISANCE_STREAM = 1

#: Named uniform(0, 1) draws per sample; renderers map each to its own range.
NUISANCE_UNIFORMS: tuple[str, ...] = (
    # image
    "img_dx", "img_dy", "img_scale", "img_brightness", "img_tint_r", "img_tint_g", "img_tint_b",
    "img_bg_level", "img_noise_std", "img_emblem_level",
    # audio
    "aud_f0", "aud_phase", "aud_gain", "aud_onset", "aud_motif_freq", "aud_motif_gain",
    "aud_motif_phase", "aud_noise_std",
    # caption
    "cap_template", *(f"cap_syn_{f}" for f in FAMILIES), "cap_n_distract",
    "cap_distract_word_0", "cap_distract_word_1", "cap_distract_slot_0", "cap_distract_slot_1",
)


def split_id(split: str) -> int:
    """The integer mixed into the seed for ``split``; unknown splits are an error."""
    try:
        return SPLIT_IDS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDS)}") from None


def _check_seed_words(seed: int, index: int) -> None:
    if seed < 0:
        raise ValueError(f"ToyWorld seed must be a non-negative int, got {seed}")
    if index < 0:
        raise ValueError(f"ToyWorld sample index must be a non-negative int, got {index}")


def draw_labels(seed: int, split: str, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Uniform labels for each index: ``{family: int32[B]}``."""
    sid = split_id(split)
    out = np.empty((len(indices), len(FAMILIES)), np.int32)
    for row, index in enumerate(indices):
        index = int(index)
        _check_seed_words(seed, index)
        rng = np.random.default_rng(np.random.SeedSequence([seed, sid, index, _LABEL_STREAM]))
        out[row] = [rng.integers(len(CONCEPT_FAMILIES[f])) for f in FAMILIES]
    return {f: out[:, j] for j, f in enumerate(FAMILIES)}


def draw_nuisance(seed: int, split: str, indices: Sequence[int], image_size: int,
                  n_audio: int) -> dict[str, np.ndarray]:
    """Label-independent nuisance for each index.

    Returns ``{name: float64[B]}`` for every name in ``NUISANCE_UNIFORMS`` plus standard normal
    float32 fields ``image_noise`` [B,H,W,3], ``audio_noise`` [B,N] and ``band_noise`` [B,N].
    """
    sid = split_id(split)
    b, k = len(indices), len(NUISANCE_UNIFORMS)
    n_img = image_size * image_size * 3
    uniforms = np.empty((b, k), np.float64)
    normals = np.empty((b, n_img + 2 * n_audio), np.float32)
    for row, index in enumerate(indices):
        index = int(index)
        _check_seed_words(seed, index)
        rng = np.random.default_rng(np.random.SeedSequence([seed, sid, index, _NUISANCE_STREAM]))
        uniforms[row] = rng.random(k)
        normals[row] = rng.standard_normal(normals.shape[1], dtype=np.float32)
    out = {name: uniforms[:, j] for j, name in enumerate(NUISANCE_UNIFORMS)}
    out["image_noise"] = normals[:, :n_img].reshape(b, image_size, image_size, 3)
    out["audio_noise"] = normals[:, n_img:n_img + n_audio]
    out["band_noise"] = normals[:, n_img + n_audio:]
    return out


def uniform_index(u: np.ndarray, n: int) -> np.ndarray:
    """Map uniform(0, 1) draws to indices in ``[0, n)``, each with probability ``1/n``."""
    return np.minimum((np.asarray(u) * n).astype(np.int64), n - 1)


def take_rows(tree: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Select the same rows of every array in a flat dict (used to duplicate nuisance)."""
    return {k: np.asarray(v)[rows] for k, v in tree.items()}


# ---- difficulty knobs (ToyWorldConfig.spurious / caption_noise / distractors) ----
# Each knob reads its own stream, drawn only when the knob is on, so the default world's draws
# above are untouched and turning one knob on never shifts another's draws.
_SPURIOUS_STREAM = 2
_CAPTION_NOISE_STREAM = 3
_DISTRACTOR_STREAM = 4

#: Named uniform(0, 1) draws per distractor object. Colour and shape are shared by the image and
#: the audio: a distractor is one object, seen and heard.
DISTRACTOR_UNIFORMS: tuple[str, ...] = (
    "dis_colour", "dis_shape", "dis_x", "dis_y", "dis_scale", "dis_brightness",
    "dis_aud_f0", "dis_aud_phase", "dis_aud_gain", "dis_aud_onset",
)


def _stream_uniforms(seed: int, split: str, indices: Sequence[int], stream: int,
                     k: int) -> np.ndarray:
    """``k`` uniform(0, 1) draws per index from ``stream``: float64 [B, k]."""
    sid = split_id(split)
    out = np.empty((len(indices), k), np.float64)
    for row, index in enumerate(indices):
        index = int(index)
        _check_seed_words(seed, index)
        rng = np.random.default_rng(np.random.SeedSequence([seed, sid, index, stream]))
        out[row] = rng.random(k)
    return out


def apply_spurious(seed: int, split: str, indices: Sequence[int], labels: Mapping[str, np.ndarray],
                   p: float, pair: tuple[str, str]) -> dict[str, np.ndarray]:
    """``labels`` with, for each sample independently with probability ``p``, the value of
    ``pair[1]`` replaced by ``labels[pair[0]] % n_values(pair[1])`` (e.g. colour -> shape:
    red -> circle, green -> square, blue -> triangle, yellow -> circle).

    The caller applies it to the train split only, so a model can learn the shortcut there and is
    caught out on validation and test, where families stay independent.
    """
    source, target = pair
    coin = _stream_uniforms(seed, split, indices, _SPURIOUS_STREAM, 1)[:, 0]
    forced = (labels[source] % len(CONCEPT_FAMILIES[target])).astype(np.int32)
    return {**labels, target: np.where(coin < p, forced, labels[target]).astype(np.int32)}


def draw_caption_shifts(seed: int, split: str, indices: Sequence[int],
                        p: float) -> dict[str, np.ndarray]:
    """Per family slot, the offset the caption adds to the true value index (mod the family's
    size): 0 (truthful) with probability ``1 - p``, else uniform over the other values.

    Returns ``{f"caption_shift_{family}": int32[B]}`` for ``text.render_captions``.
    """
    u = _stream_uniforms(seed, split, indices, _CAPTION_NOISE_STREAM, 2 * len(FAMILIES))
    out = {}
    for j, family in enumerate(FAMILIES):
        k = len(CONCEPT_FAMILIES[family])
        offset = 1 + uniform_index(u[:, 2 * j + 1], k - 1)
        out[f"caption_shift_{family}"] = np.where(u[:, 2 * j] < p, offset, 0).astype(np.int32)
    return out


def draw_distractors(seed: int, split: str, indices: Sequence[int],
                     n: int) -> dict[str, np.ndarray]:
    """``{name: float64[B, n]}`` per name in ``DISTRACTOR_UNIFORMS``, object j in column j.

    Object j always takes the same draws, so adding objects never moves the earlier ones.
    """
    k = len(DISTRACTOR_UNIFORMS)
    u = _stream_uniforms(seed, split, indices, _DISTRACTOR_STREAM, k * n).reshape(-1, n, k)
    return {name: u[:, :, j] for j, name in enumerate(DISTRACTOR_UNIFORMS)}
