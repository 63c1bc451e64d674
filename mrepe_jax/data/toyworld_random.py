"""Per-sample randomness for ToyWorld: labels and nuisance, each from its own seed stream.

A sample is a pure function of ``(labels, nuisance)``. Both are drawn from
``np.random.SeedSequence([seed, split_id, index, stream])`` so that

* any sample can be generated on its own from its index (no sequential state),
* splits never share a stream (``split_id`` differs),
* nuisance is drawn independently of the labels (``stream`` differs and a fixed number of
  numbers is drawn whatever the labels are), which is what lets a contrast pair change one
  concept while keeping every jitter and noise value identical.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mrepe_jax.data.toyworld_concepts import CONCEPT_FAMILIES, FAMILIES

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


def take_rows(tree: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Select the same rows of every array in a flat dict (used to duplicate nuisance)."""
    return {k: np.asarray(v)[rows] for k, v in tree.items()}
