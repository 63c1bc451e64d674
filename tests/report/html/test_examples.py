"""Examples on report.html's pages (report/html/examples.py): thumbnails with a heatmap over their
patches, each cell's value in its tip; token strips; a missing thumbnail said to be missing."""

import re

from mrepe_jax.report.html import examples
from mrepe_jax.report.html.charts import DIVERGING

URI = "data:image/png;base64,AAAA"


class Files:
    """Only ``a.png`` is in the workdir."""

    def figure(self, path, chart_id):
        return ""

    def data_uri(self, path):
        return URI if path == "a.png" else None


def test_an_image_example_draws_a_heat_cell_per_patch_with_its_value():
    heat = [[-1.0, 0.5, 0.0], [2.0, -0.25, 1.0]]
    page = examples.image_example({"image": "a.png", "heat": heat, "label": "red", "score": 1.23456,
                                   "note": "test #3"}, Files())
    assert f'src="{URI}"' in page and 'alt="red"' in page
    tips = re.findall(r'<rect class="cell"[^>]*data-tip="([^"]*)"', page)
    assert tips == [f"red, patch ({i}, {j}): {v:.4g}" for i, row in enumerate(heat) for j, v in enumerate(row)]
    # Row-major placement: the cell of row 1, column 2 sits at x = 2 columns, y = 1 row.
    w, h = examples.SIDE / 3, examples.SIDE / 2
    assert f'x="{2 * w:.2f}" y="{1 * h:.2f}"' in page
    # Diverging around 0 (white), symmetric: -1 of +-2 is halfway to blue, 2 full red; the larger
    # |value|, the more opaque (0: the picture shows through).
    fills = re.findall(r'<rect class="cell"[^>]*fill="(#[0-9a-f]{6})"', page)
    assert (fills[0], fills[2], fills[3]) == (DIVERGING[1], DIVERGING[2], DIVERGING[-1])
    assert re.findall(r'fill-opacity="([\d.]+)"', page) == ["0.40", "0.25", "0.10", "0.70", "0.17", "0.40"]
    assert '<span class="ex-score">1.23</span>' in page and "test #3" in page


def test_small_positive_heat_stays_pale_and_zero_heat_cold():
    """0 means nothing whatever the grid's signs: an all-positive grid is red, not a full ramp."""
    page = examples.image_example({"image": "a.png", "heat": [[0.0, 0.5], [1.0, 0.25]], "label": "x"}, Files())
    fills = re.findall(r'<rect class="cell"[^>]*fill="(#[0-9a-f]{6})"', page)
    assert fills[0] == DIVERGING[2] and fills[2] == DIVERGING[-1]
    zero = examples.image_example({"image": "a.png", "heat": [[0.0]], "label": "x"}, Files())
    assert 'fill="#f7f7f7" fill-opacity="0.10"' in zero


def test_a_missing_thumbnail_is_said_and_no_heat_is_drawn():
    page = examples.image_example({"image": "gone.png", "heat": [[1.0]], "label": "x"}, Files())
    assert "gone.png is not in the workdir" in page and 'class="cell"' not in page and "<img" not in page


def test_a_token_strip_colours_each_token_with_its_value_in_the_tip():
    page = examples.text_example({"tokens": ["<bos>", "a", "red", "<b>"], "heat": [0.0, 0.1, 2.0], "label": "red"})
    assert re.findall(r'data-tip="([^"]*)"', page) == ["&lt;bos&gt;: 0", "a: 0.1", "red: 2"]
    assert '<span class="tok">&lt;b&gt;</span>' in page  # past the heat: plain, escaped
    # The strongest token's background: full red lightened toward white, under dark text.
    assert re.findall(r'background:(#[0-9a-f]{6})', page)[2] == examples._light(DIVERGING[-1])


def test_a_gallery_holds_images_and_text_under_its_title():
    page = examples.gallery([{"image": "a.png", "label": "i"}, {"tokens": ["t"], "label": "t"}], Files(), "top")
    assert page.startswith('<p class="ex-title">top</p><div class="examples">')
    assert page.count('<figure class="example">') == 1 and page.count('<figure class="example text">') == 1
