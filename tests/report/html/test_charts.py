"""The SVG charts: heatmap cells with their values and whole-number ticks; small-multiple lines
with a shared legend that toggles series, in the colour-blind-safe palette."""

import re

from mrepe_jax.report.html import charts
from mrepe_jax.report.plots import PALETTE


def test_heatmap_cells_carry_values_and_ticks_are_whole_cells():
    svg = charts.heatmap_svg({"kind": "heatmap", "values": [[0.5, -0.25, None], [0.0, 1.0, 2.0]],
                              "xlabel": "head", "ylabel": "layer", "yticks": ["3", "4"], "center": True},
                             "h")
    tips = re.findall(r'<rect class="cell"[^>]*data-tip="([^"]*)"', svg)
    assert tips == ["layer 3, head 0: 0.5", "layer 3, head 1: -0.25", "layer 3, head 2: -",
                    "layer 4, head 0: 0", "layer 4, head 1: 1", "layer 4, head 2: 2"]
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', svg)
    assert ticks[:5] == ["3", "4", "0", "1", "2"]  # rows, then columns: never -0.5 ... 2.5
    assert charts.cell_colour(0.0, -1, 1, True) == "#f7f7f7" and charts.cell_colour(None, 0, 1, True) == "#dddddd"


def test_lines_are_small_multiples_with_toggles_and_palette_colours():
    series = [{"label": "direct", "dashed": False, "x": [0.5, 1.0], "y": [0.2, 0.4], "err": [0.1, 0.0]},
              {"label": "direct collateral", "dashed": True, "x": [0.5, 1.0], "y": [0.9, 0.8], "err": None}]
    svg = charts.lines_svg({"kind": "lines", "logx": True, "xlabel": "alpha", "ylabel": "share",
                            "panels": [{"title": "vision", "series": series},
                                       {"title": "text", "series": series}]}, "d")
    assert svg.count('<rect class="frame"') == 2 and svg.count('class="panel-title"') == 2
    assert svg.count('<button type="button" class="toggle" aria-pressed="true" data-chart="d"') == 2
    assert svg.count('<g class="series" data-series="direct">') == 2
    assert f'stroke="{PALETTE[0]}" stroke-width="1.8" stroke-dasharray="5 3"' in svg  # collateral: dashed, same colour
    assert 'data-tip="vision · direct: alpha = 0.5, value 0.2 ± 0.1"' in svg
