"""report.html from report.md and results.json: one self-contained page, its tables sortable and
linked to concept pages, its figures charts (from the plots' numbers) or inlined PNGs."""

import base64
import json
import re

import numpy as np

from mrepe_jax.report import plots
from mrepe_jax.report.html import document, render
from mrepe_jax.report.html.markdown import Heading, Image, Items, Paragraph, Table, inline, parse

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 20

MD = """# A report

Run on a box.

## Table 1: representation identification

Score: AUROC of `eq 1`, **macro**.

| Model | Text | Image |
|---|---|---|
| Baseline | 0.5 | 0.6 |

| family | text | image |
|---|---|---|
| colour | 0.470 / 0.516 (`text.proj`) | 0.826 / 0.800 (`vision.pooled`) |
| minimum | 0.1 | 0.2 |

## Causal effects

![vision colour](patching_vision_colour_layer_position.png)
![missing plot](nothing_here.png)

- a <claim> & more
- another
"""


def results():
    fams = {"colour": 0.8, "shape": 0.6}
    return {
        "identification": {
            "baseline": {"vision": fams, "text": fams}, "mrepe": {"vision": fams, "text": fams},
            "mrepe_site": {t: dict.fromkeys(fams, f"{t}.proj") for t in ("vision", "text")},
            "direction_auroc": {"vision": fams, "text": fams},
            "direction_site": {t: dict.fromkeys(fams, f"{t}.pooled") for t in ("vision", "text")}},
        "zero_shot": {"vision": {"colour": 0.9, "shape": 0.5}},
        "causal": {"vision": {"colour": {"num_pairs": 2, "spearman_exact_vs_attribution": 0.99,
                                         "total_effect": 0.1, "top_cell": {"layer": 1, "position": 2,
                                                                           "effect": 0.05, "ci95": [0.01, 0.09]}}}},
        "features": {"site": "vision.layers.0.resid_post", "latents": 8, "architectures": {"topk": {
            "l0": 4, "fvu": 0.2, "per_value": {"colour": {"red": {"feature": 3, "auroc": 0.97, "probe_auroc": 0.98}}}}},
            "directions": {"per_value": {"colour=red": 0.9}},
            "steering": {"architecture": "topk", "add": {"success": {"1.0": [0.3]}, "collateral": {"1.0": [0.8]}},
                         "clamp": {"success": 0.2, "collateral": 0.7}}},
    }


def test_the_markdown_subset_parses_into_blocks():
    blocks = parse(MD)
    assert blocks[0] == Heading(1, "A report") and blocks[1] == Paragraph("Run on a box.")
    tables = [b for b in blocks if isinstance(b, Table)]
    assert tables[0].headers == ("Model", "Text", "Image") and tables[0].rows == (("Baseline", "0.5", "0.6"),)
    assert tables[1].rows[0][1] == "0.470 / 0.516 (`text.proj`)"
    assert [b for b in blocks if isinstance(b, Image)] == [
        Image("vision colour", "patching_vision_colour_layer_position.png"), Image("missing plot", "nothing_here.png")]
    assert blocks[-1] == Items(("a <claim> & more", "another"))
    assert inline("x `a<b` **bold** [l](#x) <i>") == (
        'x <code>a&lt;b</code> <strong>bold</strong> <a href="#x">l</a> &lt;i&gt;')


def test_the_page_is_self_contained_sortable_and_linked(tmp_path):
    rng = np.random.default_rng(0)
    plots.heatmap(rng.normal(size=(2, 3)), tmp_path / "patching_vision_colour_layer_position.png",
                  title="vision / colour", xlabel="position", ylabel="layer", yticks=[0, 1])
    path = document.write(tmp_path, MD, results())
    page = path.read_text()
    assert path == tmp_path / "report.html" and page.startswith("<!doctype html>")
    # Nothing to fetch: no URL but data: and in-page anchors; a CSP that forbids the rest.
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    assert "http://" not in page and "https://" not in page
    assert f'content="{document.CSP}"' in page and "default-src 'none'" in document.CSP
    assert page.count('<table class="sortable">') >= 2 and "<script>" in page
    # Table 1's family rows link to the concept pages, their tower cells to the tower's section.
    assert '<a class="concept" href="#concept-colour">colour</a>' in page
    assert '<a href="#concept-text-colour">0.470 / 0.516 (<code>text.proj</code>)</a>' in page
    assert "<td>minimum</td>" in page  # not a concept
    for anchor in ("concept-colour", "concept-shape", "concept-vision-colour", "feature-topk-3"):
        assert f'id="{anchor}"' in page, anchor
    # The heatmap is a chart with a value per cell, on the report and on the concept page.
    assert page.count('<svg class="chart heatmap"') == 2
    assert 'data-tip="layer 1, position 2: ' in page
    assert "data:image/png;base64," in page  # the static PNG, folded away under the chart
    assert "(figure nothing_here.png is not in the workdir)" in page
    assert "<li>a &lt;claim&gt; &amp; more</li>" in page


def test_a_plot_without_numbers_is_inlined_as_its_png():
    figures = {"patching_vision_colour_layer_position.png": document.Figure(PNG, None)}
    page = render(MD, {}, figures)
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert "<svg" not in page and 'class="page"' not in page  # no identification: no concept pages


def test_figure_paths_name_the_images_and_the_concept_heatmaps():
    paths = document.figure_paths(MD, {**results(), "plot_dir": "seed0/"})
    assert paths[:2] == ["patching_vision_colour_layer_position.png", "nothing_here.png"]
    assert "seed0/patching_text_shape_layer_head.png" in paths


def test_sidecars_hold_the_plotted_numbers(tmp_path):
    plots.lines({"vision direct": ([1, 2], [0.1, float("nan")], [0.01, 0.02])}, tmp_path / "d.png",
                title="t", xlabel="alpha", ylabel="share", logx=True)
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["panels"] == [{"title": "", "series": [{"label": "vision direct", "dashed": False, "x": [1.0, 2.0],
                                                        "y": [0.1, None], "err": [0.01, 0.02]}]}]
    page = render("![d](d.png)", {}, document.load_figures(tmp_path, ["d.png"]))
    assert '<svg class="chart lines"' in page and 'data-series="vision direct"' in page


def test_blip2_identification_by_part_gets_concept_pages_per_tower():
    part = {"baseline": 0.9, "mrepe": 1.0, "direction_auroc": 0.95}
    ident = {"animal": {**part, "mrepe_site": "qformer.layers.0.resid_post", "direction_site": "lm.proj",
                        "parts": {"EVA ViT": {**part, "mrepe_site": "vision.layers.1.resid_post",
                                              "direction_site": "vision.pooled"},
                                  "OPT": {**part, "mrepe_site": "lm.layers.0.resid_post",
                                          "direction_site": "lm.layers.1.resid_post"}}}}
    page = render("| family | part |\n|---|---|\n| animal | OPT |", {"identification": ident}, {})
    assert '<a class="concept" href="#concept-animal">animal</a>' in page
    assert 'id="concept-vision-animal"' in page and 'id="concept-lm-animal"' in page
    assert "<code>lm.layers.1.resid_post</code>" in page
