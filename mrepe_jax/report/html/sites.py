"""A concept's AUROC at every candidate site, as an inline SVG line chart (pure: numbers in, markup
out): sites on x in layer order, AUROC on y, a dashed line at chance (0.5), each point's value on
hover and a legend that hides a series (the page script's ``button.toggle``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mrepe_jax.report.html.pages import esc, identification

#: Okabe-Ito blue, vermillion, bluish green, reddish purple: told apart under colour-blindness.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7")

Series = tuple[str, Mapping[str, float], bool]  # (label, {site: AUROC}, dashed)


def by_site(results: Mapping, tower: str, family: str) -> list[Series]:
    """The per-site series of one tower and family in ``results["identification"]``
    (``direction_auroc_by_site``, ``prototype_auroc_by_site``) and the hard world's direction; []
    when the run did not keep them."""
    out = []
    for res, suffix in ((results, ""), (results.get("hard") or {}, " (hard world)")):
        ident = identification(res) if isinstance(res, Mapping) else None
        if not ident:
            continue
        for key, name, dashed in (("direction_auroc_by_site", "eq 6 direction", False),
                                  ("prototype_auroc_by_site", "eq 1 prototype", True)):
            if suffix and key != "direction_auroc_by_site":
                continue  # the hard world's directions only: a chart of four lines reads worse
            values = ident.get(key, {}).get(tower, {}).get(family) if isinstance(ident.get(key), Mapping) else None
            if values:
                out.append((name + suffix, values, dashed))
    return out


def _short(site: str) -> str:
    """``vision.layers.3.resid_post`` -> ``layer 3``; ``vision.pooled`` -> ``pooled``."""
    parts = site.split(".")
    if len(parts) >= 3 and parts[1] == "layers":
        return f"layer {parts[2]}"
    return ".".join(parts[1:]) or site


def sites_chart(title: str, series: list[Series], chart_id: str) -> str:
    """Lines over the sites of every series (first series' order, then any others'); y from
    ``min(0.5, lowest) - 0.05`` rounded down to a tenth, to 1."""
    sites = list(dict.fromkeys(s for _, values, _ in series for s in values))
    ys = [v for _, values, _ in series for v in values.values() if v is not None]
    ylo = math.floor((min(ys + [0.5]) - 0.05) * 10) / 10
    ylo = max(0.0, ylo)
    step = max(44, min(90, 640 // max(len(sites), 1)))
    left, top, ph, bottom = 52, 24, 200, 70
    pw = step * max(len(sites), 1)
    width, height = left + pw + 20, top + ph + bottom

    def px(k: int) -> float:
        return left + (k + 0.5) * step

    def py(v: float) -> float:
        return top + ph - (v - ylo) / (1.0 - ylo) * ph

    out = [f'<svg class="chart lines sites" id="{esc(chart_id)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{esc(title)}">',
           f'<rect class="frame" x="{left}" y="{top}" width="{pw}" height="{ph}"/>',
           f'<text class="panel-title" x="{left + pw / 2}" y="{top - 8}" text-anchor="middle">{esc(title)}</text>']
    tick = 0.1 if 1.0 - ylo <= 0.5 else 0.25 if 1.0 - ylo <= 1.0 else 0.5
    k = math.ceil(ylo / tick - 1e-9)
    while k * tick <= 1.0 + 1e-9:
        t = round(k * tick, 6)
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
        out.append(f'<text class="tick" x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        k += 1
    if ylo < 0.5:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(0.5):.1f}" y2="{py(0.5):.1f}" '
                   'stroke="#666" stroke-dasharray="4 3"/>')
        out.append(f'<text class="tick" x="{left + pw - 2}" y="{py(0.5) - 3:.1f}" text-anchor="end">chance</text>')
    for k, site in enumerate(sites):
        x, y = px(k), top + ph + 12
        out.append(f'<text class="tick" x="{x:.1f}" y="{y}" text-anchor="end" '
                   f'transform="rotate(-35 {x:.1f} {y})"><title>{esc(site)}</title>{esc(_short(site))}</text>')
    for n, (label, values, dashed) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        pts = [(k, values[s]) for k, s in enumerate(sites) if values.get(s) is not None]
        out.append(f'<g class="series" data-series="{esc(label)}">')
        if len(pts) > 1:
            d = " ".join(f"{px(k):.1f},{py(v):.1f}" for k, v in pts)
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        for k, v in pts:
            tip = f"{sites[k]}: {label} AUROC {v:.3f}"
            out.append(f'<circle class="point" cx="{px(k):.1f}" cy="{py(v):.1f}" r="4" fill="{colour}" '
                       f'data-tip="{esc(tip)}"><title>{esc(tip)}</title></circle>')
        out.append("</g>")
    out.append(f'<text class="axis" transform="rotate(-90 12 {top + ph / 2})" x="12" y="{top + ph / 2}" '
               'text-anchor="middle">test AUROC</text>')
    out.append("</svg>")
    legend = "".join(
        f'<button type="button" class="toggle" aria-pressed="true" data-chart="{esc(chart_id)}" '
        f'data-series="{esc(label)}"><span class="swatch{" dashed" if dashed else ""}" '
        f'style="border-color:{COLOURS[n % len(COLOURS)]}"></span>{esc(label)}</button>'
        for n, (label, _, dashed) in enumerate(series))
    # Side by side when the page is wide enough: one chart per tower.
    return (f'<div class="site-chart" style="display:inline-block; vertical-align:top; margin-right:18px">'
            f'<div class="legend" title="click a series to show or hide it">{legend}</div>{"".join(out)}</div>')
