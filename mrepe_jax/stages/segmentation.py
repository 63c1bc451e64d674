"""Zero-shot segmentation from a tower's decomposition (TextSpan, Gandelsman et al. 2024, §5), with
two baselines, scored against true object masks: what the ToyWorld and CLIP experiments share.

Each map gives every patch a score for a text (one embedding per image, e.g. its class prompt):

- *decomposition*: the patch's attention terms summed over layers and heads
  (``reading.decompose``), dotted with the text: TextSpan's map;
- *last-layer tokens*: each patch token of the last layer read out as if it were CLS (the final
  LayerNorm(s) and the projection), cosine to the text;
- *attention rollout* of CLS (heads averaged, identity added, rows renormalised, layers
  multiplied; Abnar and Zuidema 2020);
- an *all-background* reference (a constant map marks no pixel: a high pixel accuracy when
  objects are small, which is why mIoU is the figure that separates methods).

Maps are upsampled from the patch grid to pixels (nearest) and binarised at each image's mean.
"""

from __future__ import annotations

import numpy as np

from mrepe_jax.reading.decompose import readout_weights
from mrepe_jax.stages.reads import token_reps


def pixels(token_scores: np.ndarray, image_size: int) -> np.ndarray:
    """Patch scores ``[N, T]`` (CLS first) as a pixel map ``[N, H, W]`` (nearest upsampling)."""
    grid = int(round(np.sqrt(token_scores.shape[1] - 1)))
    patches = token_scores[:, 1:].reshape(-1, grid, grid)
    k = image_size // grid
    return np.kron(patches, np.ones((1, k, k)))


def binary_scores(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Pixel accuracy and mIoU (object and background) of ``maps [N, H, W]`` binarised at each
    image's mean, against the true ``masks``; averaged over images."""
    pred = maps > maps.mean((1, 2), keepdims=True)
    acc = (pred == masks).mean((1, 2))

    def iou(a, b):
        union = (a | b).sum((1, 2))
        return np.where(union > 0, (a & b).sum((1, 2)) / np.maximum(union, 1), 1.0)

    miou = 0.5 * (iou(pred, masks) + iou(~pred, ~masks))
    return {"pixel_accuracy": float(acc.mean()), "miou": float(miou.mean())}


def maps(model, params, d, x: np.ndarray, text: np.ndarray, keys, tower: str = "vision") -> dict:
    """``{method: [N, T]}`` patch scores (CLS first) of the inputs ``x`` for ``text [N, D']`` (the
    module docstring's maps); ``d``: ``reading.decompose``'s decomposition of ``x``."""
    layers = model.tower_layers()[tower]
    textspan = np.einsum("ntd,nd->nt", np.asarray(d.attn).sum((1, 2)), text)
    readout = readout_weights(model, {"params": params}, tower, "proj")
    h = token_reps(model, params, tower, keys, {keys[0]: x}, f"{tower}.layers.{layers - 1}.resid_post")
    for g, b in zip(readout.scales, readout.biases):
        h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + readout.eps) * np.asarray(g) \
            + np.asarray(b)
    h = h @ np.asarray(readout.proj)
    tokens = np.einsum("ntd,nd->nt", h / np.linalg.norm(h, axis=-1, keepdims=True), text)
    rollout = None
    for layer in range(layers):
        a = token_reps(model, params, tower, keys, {keys[0]: x}, f"{tower}.layers.{layer}.attn.pattern")
        a = 0.5 * a.mean(1) + 0.5 * np.eye(a.shape[-1])  # [N, T, T]
        a = a / a.sum(-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    return {"decomposition (TextSpan)": textspan, "last-layer tokens": tokens, "attention rollout": rollout[:, 0],
            "all background (reference)": np.zeros_like(textspan)}


def scores(token_map: np.ndarray, masks: np.ndarray) -> dict:
    """``binary_scores`` of a patch map ``[N, T]`` upsampled to the masks' ``[N, H, W]``."""
    return binary_scores(pixels(token_map, masks.shape[-1]), masks)
