"""The SAE feature pages of report.html: with the stage's page data in results.json, each page
shows its top images (data: URIs, heat cells on hover), the activation histogram, the decoder row's
words and its own steering, and says "missing" only for what results.json lacks."""

import copy
import re

import pytest

from mrepe_jax.report.html import document, features

PNG = b"\x89PNG\r\n\x1a\n" + b"y" * 20


def results(with_pages: bool = True):
    card = {"feature": 3,
            "top_examples": [{"index": i, "image": f"gallery/features/test_{i:05d}.png", "activation": 1.0 - 0.1 * i,
                              "cls": 0.5, "heat": [[0.1 * i, 0.2], [0.3, 0.4]],
                              "labels": {"colour": "red", "shape": "square"}} for i in range(3)],
            "histogram": {"edges": [0.0, 0.5, 1.0], "counts": [7, 3], "zeros": 5, "n": 10},
            "words": {"top": [["red", 0.61], ["crimson", 0.4]], "bottom": [["blue", -0.5], ["navy", -0.3]],
                      "shift_norm": 0.2}}
    arch = {"l0": 4, "fvu": 0.2, "per_value": {"colour": {"red": {"feature": 3, "auroc": 0.97, "probe_auroc": 0.98}}}}
    if with_pages:
        arch["feature_pages"] = [card]
    return {"plot_dir": "seed0/", "features": {
        "site": "vision.layers.0.resid_post", "latents": 8, "architectures": {"topk": arch},
        "directions": {"per_value": {"colour=red": 0.9}},
        "feature_pages": {"examples": 3, "bins": 2, "words": 2, "prompt": "a photo of a {}", "alpha": 1.0},
        "steering": {"architecture": "topk", "add": {"success": {"1.0": [0.3]}, "collateral": {"1.0": [0.8]}},
                     "clamp": {"success": 0.2, "collateral": 0.7},
                     "per_value": {"colour": {"red": {"feature": 3, "add": {"success": {"1.0": 0.45},
                                                                             "collateral": {"1.0": 0.875}},
                                                      "clamp": {"success": 0.125, "collateral": 0.625}}}}}}}


def test_files_name_each_example_image_under_the_plot_dir():
    assert features.files(results()) == [f"seed0/gallery/features/test_{i:05d}.png" for i in range(3)]
    assert features.files(results(with_pages=False)) == [] and features.files({}) == []


def test_a_feature_page_shows_examples_histogram_words_and_its_steering():
    res = results()
    figures = {p: document.Figure(PNG, None) for p in features.files(res)}
    ((fid, name, page),) = features.feature_pages(res, document.Loaded(figures))
    assert fid == "feature-topk-3" and name == "topk #3"
    # Three thumbnails, inlined, each with its 2 x 2 heat cells; the values on hover.
    assert page.count('src="data:image/png;base64,') == 3
    assert page.count('<rect class="cell"') == 12
    assert 'data-tip="red, patch (0, 1): 0.2"' in page
    assert re.search(r"test #2, CLS 0\.5; square", page)
    # The histogram: one hoverable column per bin, its range and count.
    assert '<svg class="chart hist"' in page and page.count('<g class="point"') == 2
    assert 'data-tip="topk #3: [0, 0.5): 7 images"' in page and 'data-tip="topk #3: [0.5, 1]: 3 images"' in page
    # The words, both ends, and the route stated.
    assert "<td>crimson</td><td>0.400</td><td>navy</td><td>-0.300</td>" in page
    assert "<code>a photo of a {}</code>" in page
    # Its own steering toward red, per alpha and clamped, beside the SAE's mean.
    assert "<td>colour = red</td><td>add decoder row, alpha = 1.0</td><td>0.450</td><td>0.875</td>" in page
    assert "<td>colour = red</td><td>clamp latent</td><td>0.125</td><td>0.625</td>" in page
    assert 'class="missing"' not in page


def test_without_page_data_the_page_says_what_is_missing():
    ((_, _, page),) = features.feature_pages(results(with_pages=False), document.Loaded({}))
    assert 'class="missing"' in page and "top-activating examples" in page and "histogram" in page
    assert "<svg" not in page


def test_a_missing_example_image_is_named():
    ((_, _, page),) = features.feature_pages(results(), document.Loaded({}))
    assert "seed0/gallery/features/test_00001.png is not in the workdir" in page


def test_a_histogram_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="len\\(edges\\) == len\\(counts\\) \\+ 1"):
        features.histogram_svg({"edges": [0, 1], "counts": [1, 2]}, "x")


def write_report(workdir, res) -> str:
    """report.html of ``res`` written in ``workdir``, with every example image the pages name."""
    for path in features.files(res):
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_bytes(PNG)
    return document.write(workdir, "# r\n", res).read_text()


def test_the_report_loads_the_example_images(tmp_path):
    page = write_report(tmp_path, results())
    assert page.count('src="data:image/png;base64,') == 3 and '<a href="#features">Features</a>' in page


def with_hard_world():
    """``results()`` plus a hard world of its own SAEs: feature 3 detects red there too, and
    feature 5 (no value's best) is the best train feature for circle, which came with red and
    yellow in training and reads them on test."""
    res = results()
    hard = copy.deepcopy(res["features"])
    arch = hard["architectures"]["topk"]
    arch["spurious"] = {"source": "colour", "target": "shape", "shortcut_values": ["circle"], "per_value": {
        "circle": {"feature": 5, "sources": ["red", "yellow"], "test_auroc_target": 0.52, "test_auroc_source": 0.93},
        "square": {"feature": 3, "sources": ["green"], "test_auroc_target": 0.91, "test_auroc_source": 0.6}}}
    arch["feature_pages"] = arch["feature_pages"] + [{**arch["feature_pages"][0], "feature": 5}]
    return {**res, "hard": {"features": hard}}


def test_the_hard_worlds_features_get_pages_of_their_own_with_the_shortcut_check():
    res = with_hard_world()
    # Its images live in the hard world's workdir, its pages under their own anchors.
    assert features.files(res)[3:] == [f"hard/gallery/features/test_{i:05d}.png" for i in range(3)]
    figures = {p: document.Figure(PNG, None) for p in features.files(res)}
    pages = {fid: (name, page) for fid, name, page in features.feature_pages(res, document.Loaded(figures))}
    assert list(pages) == ["feature-topk-3", "feature-hard-topk-3", "feature-hard-topk-5"]
    name, page = pages["feature-hard-topk-5"]
    assert name == "topk #5 (hard world)" and "SAE feature topk #5 (hard world)</h1>" in page
    assert "It is no concept value's best feature on the validation images; its page is for the shortcut check." in page
    assert ("<tr><td>shape = circle</td><td>red, yellow</td><td>0.520</td><td>0.930</td>"
            "<td>the colour (shortcut)</td></tr>") in page
    assert page.count('src="data:image/png;base64,') == 3 and 'class="missing"' not in page
    assert page.count('<span class="ex-label">square red</span>') == 3  # labelled by the shape, then the colour
    _, page3 = pages["feature-hard-topk-3"]
    assert "<td>shape = square</td><td>green</td><td>0.910</td><td>0.600</td><td>the shape</td>" in page3
    assert "Shortcut check" not in pages["feature-topk-3"][1]  # the main world has none


def test_the_report_lists_both_worlds_feature_pages(tmp_path):
    page = write_report(tmp_path, with_hard_world())
    # A line per architecture and world, its features' links in order, each saying what it is for.
    assert ('<ul class="feature-index"><li>topk: <a href="#feature-topk-3" title="colour = red">#3</a></li>'
            '<li>topk (hard world): <a href="#feature-hard-topk-3" title="colour = red; shape = square (shortcut '
            'check)">#3</a> · <a href="#feature-hard-topk-5" title="shape = circle (shortcut check)">#5</a></li>'
            '</ul>') in page
    assert page.count('src="data:image/png;base64,') == 9
