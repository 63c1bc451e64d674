"""``report.html``: one self-contained page from an experiment's ``report.md`` text and its
``results.json`` (``render``, pure), written beside them (``write``, the file edge).

Every experiment gets it from the markdown it already writes: headings, paragraphs, lists and
tables (sortable), and each image either as an interactive SVG chart, when the plot wrote its
numbers beside the PNG (``report.plots.sidecar``), or as the PNG itself, base64-inlined. Then the
concept and feature pages (``pages``) and the attention heads' page (``heads``). Inline CSS and
JS, no library, no network: a Content Security Policy forbids every fetch except ``data:``
images, so the file opens offline from disk."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from collections.abc import Mapping
from pathlib import Path

from mrepe_jax.report import workdir as workdir_lib
from mrepe_jax.report.html import assets, charts, features, heads, pages
from mrepe_jax.report.html import concepts as concepts_lib
from mrepe_jax.report.html.markdown import Heading, Image, Items, Paragraph, Table, inline, parse, slug
from mrepe_jax.report.plots import sidecar

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A plot file of the workdir: its PNG bytes and the numbers it draws (either may be None)."""
    png: bytes | None = None
    data: Mapping | None = None


def figure_paths(markdown_text: str, results: Mapping) -> list[str]:
    """Every workdir file (relative path) the page may show: the report's images and what the
    concept and feature pages name (``files(results)`` of each)."""
    paths = [b.path for b in parse(markdown_text) if isinstance(b, Image)]
    paths += concepts_lib.files(results) + features.files(results)
    return list(dict.fromkeys(paths))


def _figure_html(path: str, fig: Figure | None, alt: str, chart_id: str) -> str:
    if fig is None or (fig.png is None and fig.data is None):
        return f'<p class="missing">(figure {html.escape(path)} is not in the workdir)</p>'
    body, static = "", ""
    png = (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
           f'{base64.b64encode(fig.png).decode()}">') if fig.png is not None else ""
    if fig.data is not None:
        try:
            body = charts.figure(fig.data, chart_id)
        except (KeyError, TypeError, ValueError, IndexError):  # a sidecar of another shape: the PNG
            body = ""
    if body and png:
        static = f'<details class="png"><summary>static PNG ({html.escape(path)})</summary>{png}</details>'
    elif not body:
        body = png
    title = (fig.data or {}).get("title") or alt
    return (f'<figure data-path="{html.escape(path)}">{body}{static}'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _table_html(t: Table, concepts: Mapping[str, list[str]], in_table1: bool) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in t.headers)
    towers = [pages.TOWER_OF_COLUMN.get(h.strip().lower()) for h in t.headers]
    body = []
    for row in t.rows:
        cells = []
        family = row[0] if row and row[0] in concepts else None
        for k, cell in enumerate(row):
            text = inline(cell)
            if family is not None and k == 0:
                text = f'<a class="concept" href="#{pages.concept_id(family)}">{text}</a>'
            elif family is not None and in_table1 and k < len(towers) and towers[k] in concepts[family]:
                text = f'<a href="#{pages.concept_id(family, towers[k])}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="table-wrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


@dataclasses.dataclass(frozen=True)
class Loaded:
    """``pages.Files`` over the figures ``load_figures`` read."""

    figures: Mapping[str, Figure]

    def figure(self, path: str, chart_id: str) -> str:
        fig = self.figures.get(path)
        return "" if fig is None else _figure_html(path, fig, path, chart_id)

    def data_uri(self, path: str) -> str | None:
        fig = self.figures.get(path)
        if fig is None or fig.png is None:
            return None
        return "data:image/png;base64," + base64.b64encode(fig.png).decode()


def index_lists(concepts: Mapping[str, list[str]], feature_index: str, head_worlds: list[str] = ()) -> str:
    """The report's lists of concept and feature pages (anchors ``#concepts``, ``#features``;
    ``feature_index``: ``features.index_markup``) and the link to the head-label page (``#heads``;
    ``head_worlds``: what it shows, "default world"...)."""
    out = []
    if concepts:
        out.append('<h2 id="concepts">Concept pages</h2><ul class="concept-list">' + "".join(
            f'<li><a class="concept" href="#{pages.concept_id(f)}">{pages.esc(f)}</a> ('
            + ", ".join(f'<a href="#{pages.concept_id(f, t)}">{pages.esc(t)}</a>' for t in towers) + ")</li>"
            for f, towers in concepts.items()) + "</ul>")
    if feature_index:
        out.append('<h2 id="features">Feature pages</h2>' + feature_index)
    if head_worlds:
        out.append(f'<h2 id="heads-index">Attention heads</h2><p><a href="#{heads.PAGE_ID}">TextSpan head labels and '
                   f"mean-ablation</a> ({pages.esc(', '.join(head_worlds))})</p>")
    return "".join(out)


def render(markdown_text: str, results: Mapping, figures: Mapping[str, Figure], title: str = "") -> str:
    """The page (see the module docstring). ``figures``: ``{relative path: Figure}`` of the files
    ``figure_paths`` names (missing ones are said to be missing)."""
    blocks = parse(markdown_text)
    concepts = pages.families(results)
    title = title or next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "report")
    body, toc, used, section = [], [], set(), ""
    for n, b in enumerate(blocks):
        if isinstance(b, Heading):
            anchor, k = slug(b.text), 2
            while anchor in used:
                anchor, k = f"{slug(b.text)}-{k}", k + 1
            used.add(anchor)
            if b.level == 2:
                section = b.text
                toc.append(f'<li><a href="#{anchor}">{inline(b.text)}</a></li>')
            body.append(f'<h{b.level} id="{anchor}">{inline(b.text)}</h{b.level}>')
        elif isinstance(b, Paragraph):
            body.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Items):
            body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            body.append(_table_html(b, concepts, section.startswith("Table 1")))
        elif isinstance(b, Image):
            body.append(_figure_html(b.path, figures.get(b.path), b.alt, f"fig{n}"))
    first_h1 = next((i for i, b in enumerate(body) if b.startswith("<h1")), None)
    files = Loaded(figures)
    feature_pages = features.feature_pages(results, files)
    heads_page = heads.heads_page(results)
    head_worlds = [heads.title(name) for name, _ in heads.worlds(results)]
    nav = (f'<nav class="toc" aria-label="contents"><ul>{"".join(toc)}'
           + ('<li><a href="#concepts">Concept pages</a></li>' if concepts else "")
           + ('<li><a href="#features">Feature pages</a></li>' if feature_pages else "")
           + ('<li><a href="#heads-index">Attention heads</a></li>' if heads_page else "") + "</ul></nav>")
    if first_h1 is not None:
        body.insert(first_h1 + 2, nav)
    else:
        body.insert(0, nav)

    concept_pages = [concepts_lib.concept_page(results, f, towers, files) for f, towers in concepts.items()]
    links = ['<a href="#top">Report</a>'] + (['<a href="#concepts">Concepts</a>'] if concepts else []) + (
        ['<a href="#features">Features</a>'] if feature_pages else []) + (
        [f'<a href="#{heads.PAGE_ID}">Heads</a>'] if heads_page else [])
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{assets.STYLE}</style></head><body>",
        f'<header class="top" id="top"><strong>{html.escape(title)}</strong>{"".join(links)}</header>',
        "<main>", "\n".join(body), index_lists(concepts, features.index_markup(results), head_worlds), "</main>",
        "\n".join(concept_pages), "\n".join(markup for _, _, markup in feature_pages), heads_page,
        f"<script>{assets.SCRIPT}</script></body></html>\n",
    ])


def load_figures(workdir: Path, paths) -> dict[str, Figure]:
    """The PNGs and sidecars at ``paths`` under ``workdir`` (absent files left out)."""
    out = {}
    for rel in paths:
        path = Path(workdir) / rel
        png = path.read_bytes() if path.is_file() else None
        data = None
        if sidecar(path).is_file():
            try:
                data = json.loads(sidecar(path).read_text())
            except json.JSONDecodeError:
                data = None
        if png is not None or data is not None:
            out[rel] = Figure(png, data)
    return out


def write(workdir, markdown_text: str, results: Mapping, name: str = "report.html") -> Path:
    """Writes ``render(...)`` to ``workdir/name`` (process 0 only) and returns its path."""
    workdir = Path(workdir)
    figures = load_figures(workdir, figure_paths(markdown_text, results))
    path = workdir / name
    workdir_lib.write_text(path, render(markdown_text, results, figures))
    return path
