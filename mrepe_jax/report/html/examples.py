"""Examples on a page of ``report.html``: image thumbnails with a heatmap over their patches, and
token strips coloured by a per-token score, each value on hover (pure: data in, markup out).

An image example is a mapping ``{"image": path, "heat": [[...]] | None, "label": str, "score":
float | None, "note": str}``: ``path`` a PNG in the workdir (``report.images.save_png``; the
page's ``files(results)`` names it so ``document`` loads it), ``heat`` a ``[rows, cols]`` grid
over the image's patches (row-major, as the tower's patch tokens are), drawn as translucent cells
with the value in each cell's tip. A text example is ``{"tokens": [str], "heat": [float] | None,
"label": str, "score": ...}``, each token's background its value.

Colours are diverging around 0 (red positive, blue negative, ``charts.DIVERGING``) whatever the
values' signs: a projection's or an activation's 0 means "nothing", so a grid of small positive
values must not look as hot as a grid of large ones. Image cells grow more opaque with ``|value|``
(the picture stays visible where nothing is); token backgrounds are lightened so the word stays
readable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mrepe_jax.report.html.charts import cell_colour, cell_rect
from mrepe_jax.report.html.pages import Files, esc

#: Thumbnail side in CSS pixels (ToyWorld's 32-px images drawn pixelated at 3x).
SIDE = 96


def _limit(values: Sequence[float]) -> float:
    """The colour scale's half-width: the largest ``|value|`` (0 for all-zero values: nothing hot)."""
    return max((abs(v) for v in values), default=0.0) or 1e-12


def _colour(v: float, lim: float) -> str:
    return cell_colour(v, -lim, lim, True)


def _light(colour: str, t: float = 0.45) -> str:
    """``colour`` mixed with white by ``t`` (a token's background, under dark text)."""
    rgb = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (255 - x) * t):02x}" for x in rgb)


def _grid(heat: Sequence[Sequence[float]], name: str) -> str:
    rows, cols = len(heat), len(heat[0])
    lim = _limit([v for r in heat for v in r])
    w, h = SIDE / cols, SIDE / rows
    cells = []
    for i, row in enumerate(heat):
        for j, v in enumerate(row):
            tip = f"{name}, patch ({i}, {j}): {v:.4g}"
            opacity = f' fill-opacity="{0.1 + 0.6 * min(abs(v) / lim, 1.0):.2f}"'
            cells.append(cell_rect(j * w, i * h, w, h, _colour(v, lim), tip, opacity))
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
    lim = _limit(list(heat or []))
    for k, tok in enumerate(tokens):
        if heat and k < len(heat):
            tip = f"{tok}: {heat[k]:.4g}"
            spans.append(f'<span class="tok" style="background:{_light(_colour(heat[k], lim))}" '
                         f'data-tip="{esc(tip)}">{esc(tok)}</span>')
        else:
            spans.append(f'<span class="tok">{esc(tok)}</span>')
    return f'<figure class="example text"><div class="toks">{" ".join(spans)}</div>{_caption(ex)}</figure>'


def gallery(examples: Sequence[Mapping], files: Files, title: str = "") -> str:
    """A row of examples (images and/or text), with an optional heading line."""
    items = [image_example(ex, files) if "image" in ex else text_example(ex) for ex in examples]
    head = f'<p class="ex-title">{esc(title)}</p>' if title else ""
    return f'{head}<div class="examples">{"".join(items)}</div>'

