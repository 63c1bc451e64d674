"""ToyWorld image synthesis, vectorised over the batch.

A sample's image is one filled shape (colour, shape, size, horizontal position) on a dim noisy
background, plus a grey 6x6 emblem glyph in the top-left corner. Shapes are drawn from signed
distance functions with a one-pixel soft edge so that sub-pixel jitter changes pixels smoothly
rather than flipping them. The geometry keeps concepts apart at 32x32: sizes differ by ~1.5x in
extent, positions by a quarter of the width, and the glyph lives above the shape band.

With ``ToyWorldConfig.distractors`` > 0, smaller objects of random colour and shape are drawn
first (the main object is painted over them): anywhere that clears the main object's box and the
glyph, else in a band above the shape band. Labels still describe the main object only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mrepe_jax.data.toyworld.concepts import CONCEPT_FAMILIES
from mrepe_jax.data.toyworld.sampling import uniform_index

_RGB = {  # before brightness/tint jitter
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.82, 0.15),
    "blue": (0.15, 0.30, 0.98),
    "yellow": (0.95, 0.88, 0.10),
}
_HALF_EXTENT = {"small": 0.11, "medium": 0.17, "large": 0.24}  # fraction of the image width
_CENTRE_X = {"left": 0.26, "centre": 0.50, "right": 0.74}
_CENTRE_Y = 0.58  # below the glyph band so the two never overlap
_JITTER_XY = 0.03  # fraction of the width, +-
_JITTER_SCALE = 0.05  # relative, +-
# Distractors stay below 2/3 of the smallest main object's extent (0.11 * 0.95), so "the big
# one" is always the main object; they sit in the free band y in [0.10, 0.20] when their random
# spot would overlap the main object or the glyph (glyph: x, y < 7/32 at any image size).
_DISTRACTOR_HALF_EXTENT = (0.05, 0.07)
_DISTRACTOR_SPAN = (0.08, 0.92)  # centre range, fraction of the width, per axis
_DISTRACTOR_BAND_Y = (0.10, 0.20)  # bottom edge <= 0.27 < the main object's top (>= 0.29)
_DISTRACTOR_BAND_X = (0.30, 0.92)  # left edge >= 0.23 > the glyph's right edge (<= 0.22)
_GLYPH_EDGE = 0.22

# 6x6 glyphs, far apart in Hamming distance (a test checks the minimum).
_GLYPH_ROWS = {
    "skull": (".####.", "#.##.#", "#.##.#", "######", ".#..#.", ".####."),
    "flame": ("...#..", "..##..", ".###.#", ".#####", "######", ".####."),
    "blade": (".....#", "....#.", "...#..", "#.#...", ".#....", "#.#..."),
    "flower": ("..#...", ".###..", "..#...", "..#.#.", "..##..", "..#..."),
    "sun": ("#.##.#", ".####.", "##..##", "##..##", ".####.", "#.##.#"),
    "feather": ("....##", "...###", "..###.", ".###..", ".#....", "#....."),
}


def glyph_bitmaps() -> np.ndarray:
    """The emblem glyphs as float32 [n_emblems, 6, 6] in the order of the emblem family."""
    return np.stack([
        np.array([[c == "#" for c in row] for row in _GLYPH_ROWS[name]], np.float32)
        for name in CONCEPT_FAMILIES["emblem"]
    ])


def _table(mapping: Mapping[str, object], family: str) -> np.ndarray:
    return np.asarray([mapping[v] for v in CONCEPT_FAMILIES[family]], np.float64)


def _sym(u: np.ndarray) -> np.ndarray:
    """Map uniform(0,1) to uniform(-1,1)."""
    return 2.0 * u - 1.0


def _coverage(shape: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: np.ndarray,
              size: int) -> np.ndarray:
    """Soft coverage [B,H,W,1] in [0, 1] of shapes (indices [B]) centred at (cx, cy) in pixels."""
    # Pixel centres; shapes [B,1,1] against a [1,H,W] grid.
    grid = np.arange(size, dtype=np.float64) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    r = half[:, None, None]
    sdf_circle = np.sqrt(dx * dx + dy * dy) - r
    sdf_square = np.maximum(np.abs(dx), np.abs(dy)) - r
    # Upward triangle, apex at (cx, cy - r), base 2r wide at cy + r; slant normal has norm sqrt(5)/2.
    slant = (np.abs(dx) - 0.5 * (dy + r)) / np.sqrt(1.25)
    sdf_triangle = np.maximum(dy - r, slant)
    sdf = np.choose(shape[:, None, None], (sdf_circle, sdf_square, sdf_triangle))
    return np.clip(0.5 - sdf, 0.0, 1.0)[..., None]


def _distractor_layout(nuisance: Mapping[str, np.ndarray], cx: np.ndarray, cy: np.ndarray,
                      half: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres and half extents [B, D] in pixels of the distractors, given the main object's."""
    lo, hi = _DISTRACTOR_HALF_EXTENT
    d_half = (lo + (hi - lo) * nuisance["dis_scale"]) * size
    span = lambda u, r: (r[0] + (r[1] - r[0]) * u) * size  # noqa: E731
    x, y = span(nuisance["dis_x"], _DISTRACTOR_SPAN), span(nuisance["dis_y"], _DISTRACTOR_SPAN)
    margin = d_half + half[:, None] + 1.0  # boxes one pixel apart at least
    hits_main = (np.abs(x - cx[:, None]) < margin) & (np.abs(y - cy[:, None]) < margin)
    y = np.where(hits_main, span(nuisance["dis_y"], _DISTRACTOR_BAND_Y), y)
    # The band is clear of the main object; right of the glyph it is clear of that too.
    reach = _GLYPH_EDGE * size + d_half
    hits_glyph = (x < reach) & (y < reach)
    x = np.where(hits_glyph, span(nuisance["dis_x"], _DISTRACTOR_BAND_X), x)
    y = np.where(hits_glyph, span(nuisance["dis_y"], _DISTRACTOR_BAND_Y), y)
    return x, y, d_half


def _draw_distractors(background: np.ndarray, nuisance: Mapping[str, np.ndarray], cx: np.ndarray,
                      cy: np.ndarray, half: np.ndarray, size: int) -> np.ndarray:
    """``background`` [B,1,1,1] with the distractor objects painted on: [B,H,W,3]."""
    x, y, d_half = _distractor_layout(nuisance, cx, cy, half, size)
    image = np.broadcast_to(background, (len(cx), size, size, 3))
    palette = _table(_RGB, "colour")
    for j in range(x.shape[1]):
        shape = uniform_index(nuisance["dis_shape"][:, j], len(CONCEPT_FAMILIES["shape"]))
        rgb = palette[uniform_index(nuisance["dis_colour"][:, j], len(palette))]
        rgb = rgb * (0.8 + 0.2 * nuisance["dis_brightness"][:, j])[:, None]
        cov = _coverage(shape, x[:, j], y[:, j], d_half[:, j], size)
        image = image * (1.0 - cov) + rgb[:, None, None, :] * cov
    return image


def _main_object(labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray],
                 size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The main object's centre and half extent [B] in pixels."""
    half = _table(_HALF_EXTENT, "size")[labels["size"]] * size
    half = half * (1.0 + _JITTER_SCALE * _sym(nuisance["img_scale"]))
    cx = (_table(_CENTRE_X, "position")[labels["position"]]
          + _JITTER_XY * _sym(nuisance["img_dx"])) * size
    cy = (_CENTRE_Y + _JITTER_XY * _sym(nuisance["img_dy"])) * size
    return cx, cy, half


def _glyphs(labels: Mapping[str, np.ndarray], size: int) -> tuple[np.ndarray, int]:
    """The emblem glyphs [B, g, g] at the image's scale, and their offset from the corner."""
    scale = max(1, size // 32)
    glyphs = glyph_bitmaps()[labels["emblem"]]  # [B,6,6]
    return np.kron(glyphs, np.ones((1, scale, scale), np.float32)), scale


def render_masks(labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray],
                 image_size: int) -> np.ndarray:
    """The main object's pixels, bool [B, H, W] (pure): where its coverage is at least half and
    the emblem glyph, painted over it, does not cover it (the segmentation ground truth)."""
    cx, cy, half = _main_object(labels, nuisance, image_size)
    mask = _coverage(labels["shape"], cx, cy, half, image_size)[..., 0] >= 0.5
    glyphs, scale = _glyphs(labels, image_size)
    g = glyphs.shape[-1]
    mask[:, scale:scale + g, scale:scale + g] &= glyphs < 0.5
    return mask


def render_images(labels: Mapping[str, np.ndarray], nuisance: Mapping[str, np.ndarray],
                  image_size: int) -> np.ndarray:
    """Render float32 images [B, H, W, 3] in [0, 1] from labels and nuisance (pure)."""
    size = image_size
    cx, cy, half = _main_object(labels, nuisance, size)
    coverage = _coverage(labels["shape"], cx, cy, half, size)

    rgb = _table(_RGB, "colour")[labels["colour"]]  # [B,3]
    tint = 0.05 * np.stack([_sym(nuisance[f"img_tint_{c}"]) for c in "rgb"], axis=-1)
    brightness = 0.8 + 0.2 * nuisance["img_brightness"]
    colour = np.clip(rgb * brightness[:, None] + tint, 0.0, 1.0)[:, None, None, :]
    background = (0.03 + 0.12 * nuisance["img_bg_level"])[:, None, None, None]
    if "dis_x" in nuisance:  # absent in a world without distractors: its bytes stay as they were
        background = _draw_distractors(background, nuisance, cx, cy, half, size)
    image = background * (1.0 - coverage) + colour * coverage

    # The glyph is scaled with the image so that it stays the same fraction of it.
    glyphs, scale = _glyphs(labels, size)
    g = glyphs.shape[-1]
    level = (0.75 + 0.25 * nuisance["img_emblem_level"])[:, None, None, None]
    mask = glyphs[..., None]
    patch = image[:, scale:scale + g, scale:scale + g, :]
    image[:, scale:scale + g, scale:scale + g, :] = patch * (1.0 - mask) + level * mask

    noise_std = (0.01 + 0.03 * nuisance["img_noise_std"])[:, None, None, None]
    image = image + noise_std * nuisance["image_noise"]
    return np.clip(image, 0.0, 1.0).astype(np.float32)
