"""What the pages of ``report.html`` share (pure: results in, markup out). A page is a
``<section class="page" id=...>`` that the stylesheet shows alone when its ``#id`` is the URL's
fragment, so links between pages work from disk with no script and no server.

The pages: concepts (``concepts``: ``#concept-{family}``, one section per tower
``#concept-{tower}-{family}``; their examples ``gallery``, per-site AUROCs ``sites``), SAE
features (``features``: ``#feature-{architecture}-{index}``) and attention heads (``heads``:
``#heads``). Each page module renders from ``results`` and a ``Files`` (the workdir files the page shows:
charts from plot sidecars, thumbnails), and lists the files it needs (``files(results)``), which
``document`` loads before rendering."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Protocol

from mrepe_jax.report.html.markdown import slug

#: The report's column name of each tower (``report.stage_tables.COLUMNS``) and its tower.
TOWER_OF_COLUMN = {"text": "text", "image": "vision", "audio": "audio"}


class Files(Protocol):
    """The workdir files a page may show (``document`` implements it over what it loaded)."""

    def figure(self, path: str, chart_id: str) -> str:
        """A chart (or the PNG) of the plot at ``path`` (relative to the workdir); "" if absent."""

    def data_uri(self, path: str) -> str | None:
        """``data:image/png;base64,...`` of the PNG at ``path``, or None if absent."""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def concept_id(family: str, tower: str | None = None) -> str:
    return f"concept-{slug(tower)}-{slug(family)}" if tower else f"concept-{slug(family)}"


def feature_id(architecture: str, index: int, world: str = "") -> str:
    """The page anchor of SAE feature ``index`` of ``architecture`` (``world``: "" for the main
    world, "hard" for the hard world's own SAEs, whose indices name other features)."""
    head = f"feature-{slug(world)}-" if world else "feature-"
    return f"{head}{slug(architecture)}-{int(index)}"


_KEYS = ("baseline", "mrepe", "mrepe_site", "direction_auroc", "direction_site")


def identification(results: Mapping) -> Mapping | None:
    """``results["identification"]`` as ``{key: {tower: {family: value}}}`` (``stages.identification``'s
    shape), or None. BLIP-2's ``{family: {..., "parts": {part: {key: value}}}}`` is read into it, each
    part under the tower of its sites (``vision``, ``qformer``, ``lm``)."""
    ident = results.get("identification")
    if not isinstance(ident, Mapping):
        return None
    if all(isinstance(ident.get(k), Mapping) for k in _KEYS):
        return ident
    if ident and all(isinstance(v, Mapping) and isinstance(v.get("parts"), Mapping) for v in ident.values()):
        out: dict = {k: {} for k in _KEYS}
        for family, row in ident.items():
            for part, r in row["parts"].items():
                tower = str(r.get("mrepe_site") or part).split(".")[0]
                for k in _KEYS:
                    out[k].setdefault(tower, {})[family] = r.get(k)
        return out
    return None


def families(results: Mapping) -> dict[str, list[str]]:
    """``{family: [tower, ...]}`` of every concept family that identification scored."""
    ident = identification(results)
    out: dict[str, list[str]] = {}
    if ident is None:
        return out
    for tower, fams in ident["baseline"].items():
        for family in fams:
            out.setdefault(family, []).append(tower)
    return out


def table(headers, rows, cls: str = "sortable") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def bars(items: list[tuple[str, float | None, str]], label: str) -> str:
    """Horizontal bars in [0, 1] (AUROCs), each value on hover, a mark at chance (0.5)."""
    w, left, bh = 300, 150, 18
    height = 8 + bh * len(items) + 18
    out = [f'<svg class="chart bars" viewBox="0 0 {left + w + 50} {height}" width="{left + w + 50}" '
           f'height="{height}" role="img" aria-label="{esc(label)}">']
    base = 4 + bh * len(items)
    out.append(f'<line class="grid" x1="{left + w / 2}" x2="{left + w / 2}" y1="2" y2="{base}" '
               'stroke-dasharray="3 2" style="stroke:#888"/>')  # chance, under the bars
    for i, (name, v, note) in enumerate(items):
        y = 4 + i * bh
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 13}" text-anchor="end">{esc(name)}</text>')
        if v is not None:
            tip = f"{name}: {label} {v:.3f}" + (f" ({note})" if note else "")
            out.append(f'<rect class="point" x="{left}" y="{y + 2}" width="{max(v, 0) * w:.1f}" height="{bh - 5}" '
                       f'fill="#0072B2" data-tip="{esc(tip)}"><title>{esc(tip)}</title></rect>')
            out.append(f'<text class="tick" x="{left + max(v, 0) * w + 4:.1f}" y="{y + 13}">{v:.3f}</text>')
    for t in (0, 0.5, 1):
        out.append(f'<text class="tick" x="{left + t * w}" y="{base + 12}" text-anchor="middle">{t:g}</text>')
    out.append("</svg>")
    return "".join(out)
