"""PNG plots for reports: data in, file out (``lines_figure`` builds the figure ``lines`` saves).

Each PNG gets a sidecar ``<name>.json`` beside it holding the numbers it draws (``sidecar``), so
that ``report.html`` (``mrepe_jax.report.html``) can draw the same figure interactively. Colours
are the Okabe-Ito palette (distinguishable under the common colour-vision deficiencies); heatmap
axes tick at whole cells."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from mrepe_jax.parallel import is_primary  # noqa: E402

#: Okabe & Ito (2008), "Color Universal Design": black first dropped, distinguishable for
#: protanopia, deuteranopia and tritanopia. ``report.html`` uses the same list.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: More series than this on one axis are drawn as small multiples (``lines_figure``).
MAX_SERIES_PER_AXIS = 6


def sidecar(path: Path) -> Path:
    """Where the numbers of the plot at ``path`` are written: ``x.png`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def _finite(a) -> list:
    """A JSON-safe nested list: NaN and infinities as None."""
    a = np.asarray(a, np.float64)
    return [None if not math.isfinite(v) else float(v) for v in a.ravel()] if a.ndim <= 1 else [
        _finite(row) for row in a]


def _write_sidecar(path: Path, data: dict) -> None:
    if is_primary():
        sidecar(path).write_text(json.dumps(data))


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
    # Cells sit at whole numbers: ticks at whole numbers only (never at a cell's edge, -0.5 ... 3.5).
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), [str(t) for t in yticks])
    if xticks is not None and len(xticks) <= 40:
        ax.set_xticks(range(len(xticks)), [str(t) for t in xticks], fontsize=7, rotation=90)
    fig.colorbar(im, ax=ax)
    _fit_title(fig, ax, title)
    if is_primary():
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    _write_sidecar(path, {"kind": "heatmap", "title": title, "xlabel": xlabel, "ylabel": ylabel,
                          "values": _finite(values), "center": center,
                          "xticks": None if xticks is None else [str(t) for t in xticks],
                          "yticks": None if yticks is None else [str(t) for t in yticks]})
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
          logx: bool = False, panels: bool | None = None) -> Path:
    """Writes ``lines_figure(series, ...)`` to ``path`` (PNG), and its numbers to ``sidecar(path)``."""
    fig = lines_figure(series, title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, panels=panels)
    if is_primary():
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    groups = panel_groups(series, panels)
    _write_sidecar(path, {
        "kind": "lines", "title": title, "xlabel": xlabel, "ylabel": ylabel, "logx": logx,
        "panels": [{"title": name, "series": [
            {"label": short, "dashed": dashed, "x": _finite(x), "y": _finite(y),
             "err": _finite(err[0]) if err else None}
            for short, dashed, (x, y, *err) in members]} for name, members in groups]})
    return path


def _split_label(label) -> tuple[str, bool]:
    dashed = str(label).endswith("(dashed)")
    return str(label).removesuffix("(dashed)").strip(), dashed


def panel_groups(series: dict, panels: bool | None = None) -> list[tuple[str, list]]:
    """``[(panel title, [(label, dashed, (x, y[, yerr])), ...]), ...]``: one panel per first word of
    the labels (``"vision direct"`` -> panel ``vision``, label ``direct``) when ``panels`` is True, or
    when it is None and there are more than ``MAX_SERIES_PER_AXIS`` series that split into 2 or more
    panels that way; else one untitled panel holding every series under its full label."""
    items = [(*_split_label(k), v) for k, v in series.items()]
    words = [name.split(" ", 1) for name, _, _ in items]
    splittable = all(len(w) == 2 for w in words) and len({w[0] for w in words}) >= 2
    if panels is None:
        panels = splittable and len(items) > MAX_SERIES_PER_AXIS
    if not (panels and splittable):
        return [("", items)]
    groups: dict[str, list] = {}
    for (first, rest), (_, dashed, v) in zip(words, items):
        groups.setdefault(first, []).append((rest, dashed, v))
    return list(groups.items())


def series_colours(groups) -> dict[str, str]:
    """One ``PALETTE`` colour per series label, the same in every panel; a dashed series whose label
    extends a solid one's (``"direct collateral"`` after ``"direct"``) takes that one's colour."""
    solid = list(dict.fromkeys(label for _, members in groups for label, dashed, _ in members if not dashed))
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(solid)}
    for _, members in groups:
        for label, _dashed, _ in members:
            if label in colours:
                continue
            parents = [s for s in solid if label.startswith(s + " ")]
            colours[label] = (colours[max(parents, key=len)] if parents
                              else PALETTE[len(set(colours.values())) % len(PALETTE)])
    return colours


def lines_figure(series: dict, *, title: str, xlabel: str, ylabel: str, logx: bool = False,
                 panels: bool | None = None):
    """The figure ``lines`` writes, returned, nothing saved (the caller closes it): one line per
    ``{label: (x, y)}`` or ``{label: (x, y, yerr)}`` (error bars); a label ending in
    ``"(dashed)"`` is drawn dashed, without that suffix in the legend. Many series become small
    multiples sharing their axes (``panel_groups``); colours are ``PALETTE``'s (``series_colours``); the legend sits
    beside the data, never over it."""
    for label, (x, y, *_) in series.items():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"line {label!r} needs 1-D x and y of one length, got {x.shape} and {y.shape}")
    groups = panel_groups(series, panels)
    colours = series_colours(groups)
    n = len(groups)
    fig, axes = plt.subplots(1, n, figsize=(6 if n == 1 else 3.4 * n + 1.2, 3.5), sharey=True, squeeze=False)
    for ax, (name, members) in zip(axes[0], groups):
        for label, dashed, (x, y, *err) in members:
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            ax.errorbar(x, y, yerr=np.asarray(err[0]) if err else None, label=label, lw=1.4,
                        color=colours[label], ls="--" if dashed else "-",
                        marker="o" if len(x) < 12 else None, ms=3, capsize=2)
        if logx:
            ax.set_xscale("log")
            # Few x values (alphas): tick at them, written plainly ("0.25", not "2.5 x 10^-1").
            xs = sorted({float(v) for _, _, (x, *_) in members for v in np.asarray(x, np.float64) if v > 0})
            if 0 < len(xs) <= 8:
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if name:
            ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel(ylabel)
    if n == 1:
        axes[0][0].set_title(title)
        if series:  # beside the data, never over it
            axes[0][0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        fig.suptitle(title)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def learning_curves(curves: dict, path: Path, *, title: str) -> Path:
    """One line per ``{label: losses [steps]}`` (loss against step)."""
    for label, losses in curves.items():
        if np.ndim(losses) != 1:
            raise ValueError(f"learning curve {label!r} must be 1-D, got shape {np.shape(losses)}")
    return lines({label: (np.arange(1, len(v) + 1), v) for label, v in curves.items()}, path,
                 title=title, xlabel="step", ylabel="loss")
