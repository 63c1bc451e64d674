"""PNG plots for reports (side effects only: data in, file out)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mrepe_jax.parallel import is_primary  # noqa: E402


def heatmap(values, path: Path, *, title: str, xlabel: str, ylabel: str,
            xticks=None, yticks=None, center: bool = True) -> Path:
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {values.shape} for {str(path)!r}")
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * values.shape[1] + 2), max(2.5, 0.4 * values.shape[0] + 1.5)))
    lim = float(np.nanmax(np.abs(values))) or 1.0
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r" if center else "viridis",
                   vmin=-lim if center else None, vmax=lim if center else None, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), [str(t) for t in yticks])
    if xticks is not None and len(xticks) <= 40:
        ax.set_xticks(range(len(xticks)), [str(t) for t in xticks], fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    if is_primary():
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(curves: dict, path: Path, *, title: str) -> Path:
    """One line per ``{label: losses [steps]}`` (loss against step)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, losses in curves.items():
        losses = np.asarray(losses, np.float64)
        if losses.ndim != 1:
            raise ValueError(f"learning curve {label!r} must be 1-D, got shape {losses.shape}")
        ax.plot(np.arange(1, len(losses) + 1), losses, label=str(label), lw=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    if is_primary():
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
