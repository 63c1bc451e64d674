"""Example images for the report's pages, written into the workdir as small PNGs (the file edge of
``report.html.examples``, which draws them with their heatmaps)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from mrepe_jax.report import workdir as workdir_lib


def to_uint8(pixels) -> np.ndarray:
    """``[H, W, 3]`` (or ``[H, W]``) floats in [0, 1] (clipped) or uint8, as uint8. A 2-D array
    (a spectrogram) is min-max scaled to grey first."""
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    if a.ndim == 2:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo if hi > lo else 1.0)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"an example image must be [H, W] or [H, W, 3], got shape {a.shape}")
    return (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def save_png(path: str | os.PathLike, pixels) -> None:
    """Writes ``pixels`` (``to_uint8``) as a PNG at ``path`` (process 0 only, parents created)."""
    a = to_uint8(pixels)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    workdir_lib.write_bytes(path, _png_bytes(a))


def _png_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
