"""The attention-heads page of report.html (#heads): TextSpan's labels as a layer x head grid with
the texts on hover and a sortable table, the mean-ablation heatmap, the hard world's beside the
default's, and links to it from the report's header and index."""

import re

from mrepe_jax.report.html import document, heads


def decomposition(source_heads=True):
    labelled = [{"layer": layer, "head": h, "family": "colour" if (layer, h) == (1, 0) else "shape",
                 "texts": ["colour=red", "shape=circle"] if (layer, h) == (1, 0) else ["shape=square", "size=big"],
                 "explained": [0.5, 0.25], "norm": 0.7} for layer in range(2) for h in range(2)]
    none = {"colour": 0.9, "shape": 0.8}
    ablation = {"none": none, "mlp 0": {"colour": 0.5, "shape": 0.8}, "attention 1": {"colour": 0.9, "shape": 0.7},
                **{f"head {r['layer']}.{r['head']}": {"colour": 0.9, "shape": 0.6 if r["layer"] else 0.8}
                   for r in labelled}}
    spurious = {"source": "colour", "target": "shape", "heads": [[1, 0]] if source_heads else [],
                "worst_group_before": 0.2, "mean_group_before": 0.6,
                "worst_group_after": 0.4 if source_heads else None, "mean_group_after": 0.65 if source_heads else None,
                "random_worst_group": [0.2, 0.1] if source_heads else [],
                "random_mean_group": [0.6, 0.5] if source_heads else [], "world_spurious": 0.7}
    return {"sum_error": 1e-7, "embedding_scale": 2.0, "heads": labelled, "ablation": ablation,
            "spurious": spurious, "segmentation": {"decomposition (TextSpan)": {"pixel_accuracy": 0.7, "miou": 0.4}}}


def test_the_page_shows_the_grid_the_table_and_the_ablations():
    page = heads.heads_page({"decomposition": decomposition()})
    assert page.startswith('<section class="page" id="heads">')
    # The grid: a row per layer, a cell per head holding its label, its texts on hover.
    grid = re.search(r'<table class="head-grid">.*?</table>', page).group(0)
    assert grid.count("<tr>") == 3 and grid.count('class="head-cell"') == 4
    assert 'data-tip="head 1.0: colour — colour=red (50 %), shape=circle (25 %); norm 0.7"' in grid
    # The sortable table: the ablated head's mean accuracy change (shape 0.8 -> 0.6: -0.1 averaged).
    assert "<td>1.0</td><td>1</td><td>0</td><td>colour</td><td>colour=red</td><td>0.500</td>" in page
    assert re.search(r"<td>1\.1</td>.*?<td>0\.700</td><td>-0\.100</td></tr>", page)
    # The ablation heatmap: every ablation but none, in order, a cell per family, values on hover.
    ticks = re.findall(r'data-tip="mean-ablated ([^,]+), family (\w+): ([-0-9.e]+)"', page)
    assert [t[0] for t in ticks[::2]] == ["head 0.0", "head 0.1", "head 1.0", "head 1.1", "attention 1", "mlp 0"]
    assert ("mlp 0", "colour", "-0.4") in ticks
    assert "<td>colour heads ablated</td><td>0.400</td><td>0.650</td>" in page
    assert "<td>random heads ablated (mean)</td><td>0.150</td><td>0.550</td>" in page
    assert "<td>decomposition (TextSpan)</td><td>0.700</td><td>0.400</td>" in page


def test_the_hard_world_gets_its_own_section():
    page = heads.heads_page({"config": {"world": {"spurious": 0.0, "distractors": 0}},
                             "decomposition": decomposition(), "hard": {"decomposition": decomposition(False)}})
    assert '<h2 id="heads-default">default world</h2>' in page and '<h2 id="heads-hard">hard world</h2>' in page
    assert page.count('<table class="head-grid">') == 2
    assert "No head's label is colour" in page


def test_a_dual_encoders_heads_are_labelled_by_their_first_text():
    labelled = [{"layer": 0, "head": h, "texts": [f"a photo of a {w}", "a dog"], "explained": [0.3, 0.1],
                 "norm": 1.0} for h, w in enumerate(["cat", "car"])]
    page = heads.heads_page({"decomposition": {"heads": labelled, "sum_error": 1e-6, "segmentation": None}})
    assert '<h2 id="heads-main">this model</h2>' in page
    assert 'data-tip="head 0.1: a photo of a car — a photo of a car (30 %), a dog (10 %); norm 1"' in page
    assert "Mean-ablation" not in page and "Spurious" not in page and 'class="head-key"' not in page


def test_no_head_labels_no_page():
    assert heads.heads_page({}) == "" and heads.heads_page({"decomposition": {"heads": []}}) == ""


def test_the_report_links_the_page_from_its_header_and_index():
    page = document.render("# r\n\n## A\n\ntext\n", {"config": {"world": {}}, "decomposition": decomposition()}, {})
    assert '<header class="top" id="top"><strong>r</strong><a href="#top">Report</a><a href="#heads">Heads</a>' in page
    assert '<h2 id="heads-index">Attention heads</h2><p><a href="#heads">' in page and "(default world)" in page
    assert '<li><a href="#heads-index">Attention heads</a></li>' in page
    assert page.count('<section class="page" id="heads">') == 1
    assert 'href="#heads' not in document.render("# r\n", {}, {})
