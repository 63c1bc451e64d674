"""PNG plots for reports: data in, file out (``lines_figure`` builds the figure ``lines`` saves)."""

from __future__ import annotations

import textwrap
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
    # A minimum width: a layer x head map is only a few cells wide, narrower than its title.
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * values.shape[1] + 2), max(2.5, 0.4 * values.shape[0] + 1.5)))
    lim = float(np.nanmax(np.abs(values))) or 1.0
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r" if center else "viridis",
                   vmin=-lim if center else None, vmax=lim if center else None, interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), [str(t) for t in yticks])
    if xticks is not None and len(xticks) <= 40:
        ax.set_xticks(range(len(xticks)), [str(t) for t in xticks], fontsize=7, rotation=90)
    fig.colorbar(im, ax=ax)
    _fit_title(fig, ax, title)
    if is_primary():
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _fit_title(fig, ax, title: str) -> None:
    """Sets ``title`` on ``ax``, wrapped until it lies within ``fig``, and lays the figure out.

    The title is centred on the axes, not the figure, so a title wider than a narrow axes runs off
    the figure's left edge (the colorbar takes the right); the wrap width is found by measuring."""
    renderer = fig.canvas.get_renderer()
    wrapped = [title]
    for _ in range(8):
        ax.set_title("\n".join(wrapped))
        fig.tight_layout()
        box, frame = ax.title.get_window_extent(renderer), fig.bbox
        centre = (box.x0 + box.x1) / 2
        room = 2 * min(centre - frame.x0, frame.x1 - centre)
        longest = max(len(line) for line in wrapped)
        if box.width <= room or longest <= 10:
            return
        wrapped = textwrap.wrap(title, max(10, min(longest - 1, int(longest * room / box.width * 0.95))))


def lines(series: dict, path: Path, *, title: str, xlabel: str, ylabel: str,
          logx: bool = False) -> Path:
    """Writes ``lines_figure(series, ...)`` to ``path`` (PNG)."""
    fig = lines_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, logx=logx)
    if is_primary():
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lines_figure(series: dict, *, title: str, xlabel: str, ylabel: str, logx: bool = False):
    """The figure ``lines`` writes, returned, nothing saved (the caller closes it): one line per
    ``{label: (x, y)}`` or ``{label: (x, y, yerr)}`` (error bars); a label ending in
    ``"(dashed)"`` is drawn dashed, without that suffix in the legend."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (x, y, *err) in series.items():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"line {label!r} needs 1-D x and y of one length, got {x.shape} and {y.shape}")
        dashed = str(label).endswith("(dashed)")
        name = str(label).removesuffix("(dashed)").strip()
        ax.errorbar(x, y, yerr=np.asarray(err[0]) if err else None, label=name, lw=1.2,
                    ls="--" if dashed else "-", marker="o" if len(x) < 12 else None, ms=3, capsize=2)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def learning_curves(curves: dict, path: Path, *, title: str) -> Path:
    """One line per ``{label: losses [steps]}`` (loss against step)."""
    for label, losses in curves.items():
        if np.ndim(losses) != 1:
            raise ValueError(f"learning curve {label!r} must be 1-D, got shape {np.shape(losses)}")
    return lines({label: (np.arange(1, len(v) + 1), v) for label, v in curves.items()}, path,
                 title=title, xlabel="step", ylabel="loss")
