"""Concept pages (report/html/concepts.py) from results with the per-site AUROCs and the gallery
(experiments/toyworld/gallery.py's keys): a chart per tower, thumbnails inlined, labels before and
after steering, and a "missing" notice only for what the results lack."""

import re

import numpy as np

from mrepe_jax.report.html import concepts, document
from mrepe_jax.report.images import save_png

# Layer order is not name order: "layers.10" sorts before "layers.9".
SITES = ("vision.layers.9.resid_post", "vision.layers.10.resid_post", "vision.pooled", "vision.proj")


def _ident():
    fams = {"colour": 0.8}
    by_site = {"vision": {"colour": dict(zip(SITES, (0.61, 0.72, 0.9, 0.85)))},
               "text": {"colour": {"text.layers.0.resid_post": 0.55, "text.proj": 0.95}}}
    towers = ("vision", "text", "audio")
    return {"baseline": dict.fromkeys(towers, fams), "mrepe": dict.fromkeys(towers, fams),
            "mrepe_site": {t: {"colour": f"{t}.proj"} for t in towers},
            "direction_auroc": dict.fromkeys(towers, fams),
            "direction_site": {t: {"colour": f"{t}.pooled"} for t in towers},
            "direction_auroc_by_site": by_site,
            "prototype_auroc_by_site": {"vision": {"colour": dict(zip(SITES, (0.5, 0.6, 0.7, 0.8)))}}}


def _example(index, score):
    return {"index": index, "truth": "red", "score": score, "image": f"gallery/concepts/test_{index:05d}.png",
            "cls": 0.5, "token_mean": 0.1, "heat": [[0.25, -0.5], [1.0, 0.0]]}


def results():
    text_ex = {"index": 4, "truth": "red", "score": 2.0, "tokens": ["<bos>", "a", "red", "disc", "<eos>"],
               "heat": [0.1, 0.2, 1.5, 0.0, 0.3], "token_mean": 0.42}
    gallery = {
        "per_side": 1, "not_shown": {"audio": "not drawn"}, "seconds": 1.0,
        "towers": {"vision": {"colour": {"site": "vision.pooled", "heat_site": "vision.layers.10.resid_post",
                                         "grid": [2, 2], "values": {"red": {"top": [_example(1, 3.5)],
                                                                            "bottom": [_example(2, -3.5)]}}}},
                   "text": {"colour": {"site": "text.proj", "heat_site": "text.layers.0.resid_post",
                                       "values": {"red": {"top": [text_ex], "bottom": []}}}},
                   "audio": {"colour": {"site": "audio.proj", "heat_site": "audio.layers.0.resid_post",
                                        "grid": [4, 2], "values": {"red": {"top": [{
                                            **_example(7, 1.0), "image": "gallery/concepts/audio_00007.png",
                                            "heat": [[0.1, 0.2]] * 4}], "bottom": []}}}}},
        "steering": {"alpha": 1.0, "num_inputs": 16, "towers": {
            "vision": {"site": "vision.layers.10.resid_post", "scale": 3.0, "families": {"colour": {
                "red": {"success": 0.75, "unedited": 0.25, "examples": [{"index": 3, "truth": "blue", "before": "blue",
                                                       "after": "red", "image": "gallery/concepts/test_00003.png"}]},
                "blue": {"success": 0.0, "unedited": 0.0, "examples": []}}}},
            "text": {"site": "text.layers.0.resid_post", "scale": 2.0, "families": {"colour": {
                "red": {"success": 0.5, "unedited": 0.0, "examples": [{"index": 5, "truth": "green", "before": "green",
                                                      "after": "red", "tokens": ["a", "green", "disc"]}]}}}}},
            "captions": {"site": "qformer.layers.0.resid_post", "families": {"colour": {"red": {
                "success": 0.9, "unedited": 0.1, "examples": [{"index": 3, "image": "gallery/concepts/test_00003.png",
                                              "truth": "blue", "before": "a blue disc", "after": "a red disc"}]}}}}}}
    return {"identification": _ident(), "gallery": gallery, "plot_dir": "seed0/"}


def _write_thumbnails(workdir, res):
    for path in concepts.files(res):
        if "gallery/" in path:
            save_png(workdir / path, np.full((8, 8, 3), 0.5))


def _page(tmp_path, res):
    _write_thumbnails(tmp_path, res)
    html = document.write(tmp_path, "# r\n", res).read_text()
    return html[html.index('<section class="page" id="concept-colour">'):]


def test_the_files_name_every_thumbnail_once_under_plot_dir():
    paths = [p for p in concepts.files(results()) if "gallery/" in p]
    assert paths == ["seed0/gallery/concepts/test_00001.png", "seed0/gallery/concepts/test_00002.png",
                     "seed0/gallery/concepts/audio_00007.png", "seed0/gallery/concepts/test_00003.png"]


def test_a_concept_page_shows_sites_examples_and_steering(tmp_path):
    page = _page(tmp_path, results())
    # A chart per tower that kept them, the per-site values on hover, chance drawn, a legend.
    assert page.count('<svg class="chart lines sites"') == 2  # vision and text; audio has none
    assert 'data-tip="vision.layers.10.resid_post: eq 6 direction AUROC 0.720"' in page
    assert 'data-tip="vision.proj: eq 1 prototype AUROC 0.800"' in page
    assert 'data-tip="text.proj: eq 6 direction AUROC 0.950"' in page
    assert ">chance</text>" in page and 'data-chart="concept-vision-colour-sites"' in page
    # Sites in layer order on x: layer 9 left of layer 10 left of pooled left of proj.
    xs = [float(re.search(rf'cx="([\d.]+)"[^>]*data-tip="{s}: eq 6', page)[1]) for s in SITES]
    assert xs == sorted(xs)
    # Thumbnails inlined, their patch heat on hover; text tokens with their values.
    # vision top and bottom, the audio spectrogram, the steered image, the caption row's
    assert page.count('src="data:image/png;base64,') == 5
    assert "log-mel spectrogram the audio tower reads" in page and 'data-tip="true: red, patch (3, 1): 0.2"' in page
    assert 'data-tip="true: red, patch (1, 0): 1"' in page and "red: highest" in page and "red: lowest" in page
    assert 'data-tip="red: 1.5"' in page
    # Steering before -> after, the shares labelled the target, and a target nothing moved to.
    assert '<span class="ex-label">blue → red</span>' in page
    assert "toward red: 75% of other-value inputs labelled red after (25% before)" in page
    assert '<span class="ex-label">green → red</span>' in page
    assert "token at <code>vision.layers.10.resid_post</code> (Table 3's site)" in page
    nothing = '<p class="missing">no input changed its label to blue</p>'
    assert nothing in page
    assert "<td>a blue disc</td><td>a red disc</td>" in page and "<td>10% &rarr; 90%</td>" in page
    assert 'class="missing"' not in page.replace(nothing, "")


def test_what_the_results_lack_is_said_to_be_missing(tmp_path):
    res = results()
    del res["gallery"]
    for key in ("direction_auroc_by_site", "prototype_auroc_by_site"):
        del res["identification"][key]
    page = _page(tmp_path, res)
    assert "sites" not in re.findall(r'<svg class="([^"]*)"', page)
    assert "is not in results.json for this run" in page and "No gallery in results.json" in page
    assert "data:image/png" not in page


def test_a_missing_thumbnail_is_named(tmp_path):
    res = results()
    page = document.render("# r\n", res, {})  # no file loaded
    assert "gallery/concepts/test_00001.png is not in the workdir" in page


def test_the_sae_features_of_each_world_link_to_their_own_pages():
    arch = {"per_value": {"colour": {"red": {"feature": 3, "auroc": 0.97, "probe_auroc": 0.98}}}}
    hard_arch = {"per_value": {"colour": {"red": {"feature": 9, "auroc": 0.81, "probe_auroc": 0.9}}}}
    res = {**results(), "features": {"architectures": {"topk": arch}},
           "hard": {"features": {"architectures": {"topk": hard_arch}}}}
    page = concepts.concept_page(res, "colour", ["vision"], document.Loaded({}))
    assert '<td>red</td><td><a href="#feature-topk-3">topk #3</a></td><td>0.970</td>' in page
    assert '<td>red (hard world)</td><td><a href="#feature-hard-topk-9">topk #9</a></td><td>0.810</td>' in page
