"""Report plots: the figures drawn (artists, styles, labels), files written, malformed series named."""

import numpy as np
import pytest

from mrepe_jax.report.plots import learning_curves, lines, lines_figure, plt

SERIES = {"a": ([0.1, 1.0], [0.2, 0.8], [0.05, 0.1]), "b (dashed)": ([0.1, 1.0], [0.9, 0.7])}


def test_lines_figure_draws_error_bars_dashed_series_and_labels():
    fig = lines_figure(SERIES, title="t", xlabel="alpha", ylabel="share", logx=True)
    try:
        (ax,) = fig.axes
        a, b = ax.containers  # one ErrorbarContainer per series, in order
        assert a.has_yerr and not b.has_yerr and not a.has_xerr
        a_line, b_line = a.lines[0], b.lines[0]
        assert a_line.get_linestyle() == "-" and b_line.get_linestyle() == "--"
        np.testing.assert_array_equal(a_line.get_xdata(), [0.1, 1.0])
        np.testing.assert_array_equal(a_line.get_ydata(), [0.2, 0.8])
        np.testing.assert_array_equal(b_line.get_ydata(), [0.9, 0.7])
        # Series a's bars: vertical segments from y - yerr to y + yerr at each x.
        (bars,) = a.lines[2]
        np.testing.assert_allclose(np.asarray(bars.get_segments()),
                                   [[[0.1, 0.15], [0.1, 0.25]], [[1.0, 0.7], [1.0, 0.9]]])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]  # suffix dropped
        assert [a.get_label(), b.get_label()] == ["a", "b"]
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("t", "alpha", "share", "log")
    finally:
        plt.close(fig)


def test_lines_write_a_png_with_error_bars_and_dashed_series(tmp_path):
    path = lines(SERIES, tmp_path / "dose.png", title="t", xlabel="alpha", ylabel="share", logx=True)
    assert path == tmp_path / "dose.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
    assert learning_curves({"x": np.linspace(1, 0, 5)}, tmp_path / "c.png", title="t").stat().st_size > 1000


def test_malformed_series_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"line 'a' needs 1-D x and y of one length, got \(2,\) and \(3,\)"):
        lines({"a": ([1, 2], [1, 2, 3])}, tmp_path / "x.png", title="", xlabel="", ylabel="")
    with pytest.raises(ValueError, match=r"learning curve 'c' must be 1-D, got shape \(2, 2\)"):
        learning_curves({"c": np.ones((2, 2))}, tmp_path / "y.png", title="")


@pytest.mark.parametrize("title", ["vision / emblem: attn.z patching, summed over positions (top layers only)",
                                   "a_single_unbreakable_title_" * 4])
def test_a_narrow_heatmap_shows_its_whole_title(tmp_path, monkeypatch, title):
    from mrepe_jax.report import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep the figure to measure it
    path = plots.heatmap(np.array([[0.4, -0.2]]), tmp_path / "h.png", title=title, xlabel="head",
                         ylabel="layer", yticks=[0])
    assert path.stat().st_size > 1000
    fig = figures[0]
    fig.canvas.draw()
    ax_title = fig.axes[0].title
    box, frame = ax_title.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)
    assert "".join(ax_title.get_text().split()) == "".join(title.split())  # wrapped, nothing lost


def test_heatmap_ticks_sit_on_whole_cells_and_its_numbers_are_saved(tmp_path, monkeypatch):
    import json

    from mrepe_jax.report import plots

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    values = np.arange(12.0).reshape(3, 4)
    path = plots.heatmap(values, tmp_path / "h.png", title="t", xlabel="head", ylabel="layer")
    ax = figures[0].axes[0]
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        shown = [t for t in ticks if -0.5 <= t <= 3.5]
        assert shown and all(float(t).is_integer() for t in shown), ticks
    data = json.loads(plots.sidecar(path).read_text())
    assert data["kind"] == "heatmap" and data["values"] == values.tolist() and data["xticks"] is None


def test_many_series_become_small_multiples_in_the_palette(tmp_path):
    from mrepe_jax.report.plots import PALETTE

    series = {f"{tower} {method}{suffix}": ([0.5, 1.0], [0.1, 0.2], [0.01, 0.01])
              for tower in ("vision", "text", "audio") for method in ("direct", "combined")
              for suffix in ("", " collateral (dashed)")}
    fig = lines_figure(series, title="dose", xlabel="alpha", ylabel="share", logx=True)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["vision", "text", "audio"]  # 4 lines per panel, not 12 on one
        colours = {c.get_label(): c.lines[0].get_color() for c in fig.axes[0].containers}
        assert colours == {"direct": PALETTE[0], "direct collateral": PALETTE[0],
                           "combined": PALETTE[1], "combined collateral": PALETTE[1]}
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.5", "1"]
        (legend,) = fig.legends  # one legend, outside the panels
        assert [t.get_text() for t in legend.get_texts()] == list(colours)
    finally:
        plt.close(fig)
    lines(series, tmp_path / "d.png", title="dose", xlabel="alpha", ylabel="share", logx=True)
    import json

    data = json.loads((tmp_path / "d.json").read_text())
    assert [p["title"] for p in data["panels"]] == ["vision", "text", "audio"]
    assert [s["label"] for s in data["panels"][0]["series"]] == list(colours)
