"""Examples on a page of ``report.html``: image thumbnails with a heatmap over their patches, and
token strips coloured by a per-token score, each value on hover (pure: data in, markup out).

An image example is a mapping ``{"image": path, "heat": [[...]] | None, "label": str, "score":
float | None, "note": str}``: ``path`` a PNG in the workdir (``report.images.save_png``; the
page's ``files(results)`` names it so ``document`` loads it), ``heat`` a ``[rows, cols]`` grid
over the image's patches (row-major, as the tower's patch tokens are), drawn as translucent cells
(diverging colours around 0 when the grid has both signs) with the value in each cell's tip.
A text example is ``{"tokens": [str], "heat": [float] | None, "label": str, "score": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mrepe_jax.report.html.charts import cell_colour
from mrepe_jax.report.html.pages import Files, esc

#: Thumbnail side in CSS pixels (ToyWorld's 32-px images drawn pixelated at 3x).
SIDE = 96


def _range(values: Sequence[float]) -> tuple[float, float, bool]:
    lo, hi = min(values), max(values)
    center = lo < 0 < hi
    if center:
        m = max(-lo, hi)
        return -m, m, True
    return lo, hi if hi > lo else lo + 1e-12, False


def _grid(heat: Sequence[Sequence[float]], name: str) -> str:
    rows, cols = len(heat), len(heat[0])
    lo, hi, center = _range([v for r in heat for v in r])
    w, h = SIDE / cols, SIDE / rows
    cells = []
    for i, row in enumerate(heat):
        for j, v in enumerate(row):
            tip = f"{name}, patch ({i}, {j}): {v:.4g}"
            cells.append(f'<rect class="cell" x="{j * w:.2f}" y="{i * h:.2f}" width="{w:.2f}" height="{h:.2f}" '
                         f'fill="{cell_colour(v, lo, hi, center)}" fill-opacity="0.55" data-tip="{esc(tip)}">'
                         f"<title>{esc(tip)}</title></rect>")
    return (f'<svg class="heat" viewBox="0 0 {SIDE} {SIDE}" width="{SIDE}" height="{SIDE}" '
            f'aria-label="{esc(name)} heatmap">{"".join(cells)}</svg>')


def _caption(ex: Mapping) -> str:
    score = ex.get("score")
    parts = [f'<span class="ex-label">{esc(ex.get("label", ""))}</span>']
    if score is not None:
        parts.append(f'<span class="ex-score">{score:.3g}</span>')
    if ex.get("note"):
        parts.append(f'<span class="ex-note">{esc(ex["note"])}</span>')
    return "<figcaption>" + " ".join(parts) + "</figcaption>"


def image_example(ex: Mapping, files: Files) -> str:
    """One thumbnail (missing file: said so) with its heatmap overlay, label, score and note."""
    uri = files.data_uri(ex["image"])
    name = str(ex.get("label", "example"))
    if uri is None:
        body = f'<div class="ex-missing missing">{esc(ex["image"])} is not in the workdir</div>'
    else:
        heat = _grid(ex["heat"], name) if ex.get("heat") else ""
        body = (f'<div class="ex-img"><img alt="{esc(name)}" src="{uri}" width="{SIDE}" height="{SIDE}">'
                f"{heat}</div>")
    return f'<figure class="example">{body}{_caption(ex)}</figure>'


def text_example(ex: Mapping) -> str:
    """One token strip, each token's background its score (tip: the value)."""
    tokens, heat = list(ex["tokens"]), ex.get("heat")
    spans = []
    if heat:
        lo, hi, center = _range(list(heat))
    for k, tok in enumerate(tokens):
        if heat and k < len(heat):
            tip = f"{tok}: {heat[k]:.4g}"
            spans.append(f'<span class="tok" style="background:{cell_colour(heat[k], lo, hi, center)}" '
                         f'data-tip="{esc(tip)}">{esc(tok)}</span>')
        else:
            spans.append(f'<span class="tok">{esc(tok)}</span>')
    return f'<figure class="example text"><div class="toks">{" ".join(spans)}</div>{_caption(ex)}</figure>'


def gallery(examples: Sequence[Mapping], files: Files, title: str = "") -> str:
    """A row of examples (images and/or text), with an optional heading line."""
    items = [image_example(ex, files) if "image" in ex else text_example(ex) for ex in examples]
    head = f'<p class="ex-title">{esc(title)}</p>' if title else ""
    return f'{head}<div class="examples">{"".join(items)}</div>'

