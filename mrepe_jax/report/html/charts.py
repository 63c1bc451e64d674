"""Interactive charts as inline SVG (pure: numbers in, markup out), from the numbers a plot wrote
beside its PNG (``report.plots.sidecar``). Every mark that carries a value has a ``data-tip``
(shown on hover by the page's script, ``assets.SCRIPT``) and a ``<title>`` (the browser's own
tooltip, also read by screen readers); series toggle from the legend."""

from __future__ import annotations

import html
import math

from mrepe_jax.report.plots import series_colours


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _mix(a: str, b: str, t: float) -> str:
    ca = [int(a[i:i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb))


def _ramp(stops: list[str], t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    return _mix(stops[i], stops[i + 1], t - i)


#: Blue-white-red (ColorBrewer RdBu, reversed: negative blue): readable under red-green deficiency.
DIVERGING = ["#2166ac", "#92c5de", "#f7f7f7", "#f4a582", "#b2182b"]
#: viridis at five stops.
SEQUENTIAL = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def cell_colour(v, lo: float, hi: float, center: bool) -> str:
    if v is None:
        return "#dddddd"
    if center:
        lim = max(abs(lo), abs(hi)) or 1.0
        return _ramp(DIVERGING, 0.5 + 0.5 * v / lim)
    return _ramp(SEQUENTIAL, 0.0 if hi == lo else (v - lo) / (hi - lo))


def cell_rect(x: float, y: float, w: float, h: float, fill: str, tip: str, style: str = "") -> str:
    """One heatmap cell: its value in ``tip`` on hover (``data-tip``) and as its title."""
    return (f'<rect class="cell" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" fill="{fill}"{style} '
            f'data-tip="{_esc(tip)}"><title>{_esc(tip)}</title></rect>')


def _every(n: int, room: int) -> int:
    """Label every k-th tick so that at most ``room`` labels show."""
    return max(1, math.ceil(n / max(room, 1)))


def heatmap_svg(data: dict, chart_id: str) -> str:
    """A heatmap: one ``<rect>`` per cell with its row, column and value on hover; ticks at whole
    cells (the sidecar's tick labels, else the cell index); a colour bar."""
    values = data["values"]
    rows, cols = len(values), len(values[0]) if values else 0
    flat = [v for row in values for v in row if v is not None]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    center = data.get("center", True)
    yt = data.get("yticks") or [str(i) for i in range(rows)]
    xt = data.get("xticks") or [str(i) for i in range(cols)]
    cw = min(32.0, max(6.0, 640.0 / max(cols, 1)))
    ch = min(26.0, max(6.0, 360.0 / max(rows, 1)))
    ch = max(ch, 48.0 / max(rows, 1))  # room for the rotated axis name beside one or two rows
    left = 16 + 7 * max([len(t) for t in yt] + [2]) + 18
    xlen = max([len(t) for t in xt] + [1])
    rotate = xlen > 3 or cw < 14
    bottom = (7 * min(xlen, 24) + 34) if rotate else 40
    top, bar = 10, 70
    width, height = left + cols * cw + bar, top + rows * ch + bottom
    xl, yl = _esc(data.get("xlabel", "")), _esc(data.get("ylabel", ""))
    cid = chart_id
    # Axis names without their glosses ("position (token of ...)" -> "position") in the tooltips.
    row_name = (data.get("ylabel") or "row").split(" (")[0]
    col_name = (data.get("xlabel") or "column").split(" (")[0]
    out = [f'<svg class="chart heatmap" id="{cid}" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{_esc(data.get("title", ""))}">']
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            tip = f"{row_name} {yt[i]}, {col_name} {xt[j]}: {_num(v)}"
            out.append(cell_rect(left + j * cw, top + i * ch, cw, ch, cell_colour(v, lo, hi, center), tip))
    ky = _every(rows, int(rows * ch / 12))
    for i in range(0, rows, ky):
        out.append(f'<text class="tick" x="{left - 4}" y="{top + (i + 0.5) * ch + 4:.1f}" '
                   f'text-anchor="end">{_esc(yt[i])}</text>')
    kx = _every(cols, int(cols * cw / 12))
    for j in range(0, cols, kx):
        x, y = left + (j + 0.5) * cw, top + rows * ch + 12
        label = _esc(xt[j][:24])
        if rotate:
            out.append(f'<text class="tick" x="{x:.1f}" y="{y:.1f}" text-anchor="end" '
                       f'transform="rotate(-60 {x:.1f} {y:.1f})">{label}</text>')
        else:
            out.append(f'<text class="tick" x="{x:.1f}" y="{y + 2:.1f}" text-anchor="middle">{label}</text>')
    out.append(f'<text class="axis" x="{left + cols * cw / 2:.1f}" y="{height - 4:.1f}" '
               f'text-anchor="middle">{xl}</text>')
    out.append(f'<text class="axis" transform="rotate(-90 12 {top + rows * ch / 2:.1f})" x="12" '
               f'y="{top + rows * ch / 2:.1f}" text-anchor="middle">{yl}</text>')
    # Colour bar: 20 steps from the low end to the high end of the scale.
    lim = max(abs(lo), abs(hi)) or 1.0
    blo, bhi = (-lim, lim) if center else (lo, hi)
    bx, bh = left + cols * cw + 14, max(rows * ch, 60)
    for k in range(20):
        v = bhi - (bhi - blo) * (k + 0.5) / 20
        out.append(f'<rect x="{bx}" y="{top + k * bh / 20:.1f}" width="12" height="{bh / 20 + 0.5:.1f}" '
                   f'fill="{cell_colour(v, lo, hi, center)}"/>')
    out.append(f'<text class="tick" x="{bx + 15}" y="{top + 8}">{_num(bhi, 3)}</text>')
    out.append(f'<text class="tick" x="{bx + 15}" y="{top + bh:.1f}">{_num(blo, 3)}</text>')
    out.append("</svg>")
    return "".join(out)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + k * step, 10) for k in range(int((hi - start) / step + 1e-9) + 1)]


def lines_svg(data: dict, chart_id: str) -> str:
    """Line charts as small multiples (one panel per sidecar panel, shared y axis): each point's
    value (± its error bar) on hover; a legend of buttons that show or hide a series in every
    panel. Colours: ``PALETTE``, a dashed series sharing its solid parent's (``plots.series_colours``)."""

    panels = data["panels"]
    groups = [(p["title"], [(s["label"], s["dashed"], None) for s in p["series"]]) for p in panels]
    colours = series_colours(groups)
    logx = bool(data.get("logx"))
    xs = [x for p in panels for s in p["series"] for x in s["x"] if x is not None and (x > 0 or not logx)]
    ys = []
    for p in panels:
        for s in p["series"]:
            for y, e in zip(s["y"], s["err"] or [None] * len(s["y"])):
                if y is not None:
                    ys += [y - (e or 0), y + (e or 0)]
    xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    pad = 0.05 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad
    fx = (lambda x: math.log10(x)) if logx else (lambda x: x)
    flo, fhi = fx(xlo), fx(xhi)
    if fhi - flo < 1e-12:
        flo, fhi = flo - 1, fhi + 1
    pw, ph, left, top, gap, bottom = 260, 200, 52, 26, 24, 42
    width = left + len(panels) * (pw + gap)
    height = top + ph + bottom
    cid = chart_id
    out = [f'<svg class="chart lines" id="{cid}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_esc(data.get("title", ""))}">']
    yticks = _nice_ticks(ylo, yhi)
    uniq = sorted(set(xs))
    xticks = uniq if 0 < len(uniq) <= 8 else (
        [10 ** k for k in range(math.ceil(flo), math.floor(fhi) + 1)] if logx else _nice_ticks(xlo, xhi))
    for k, p in enumerate(panels):
        x0 = left + k * (pw + gap)

        def px(x, x0=x0):
            return x0 + (fx(x) - flo) / (fhi - flo) * pw

        def py(y):
            return top + ph - (y - ylo) / (yhi - ylo) * ph

        out.append(f'<rect class="frame" x="{x0}" y="{top}" width="{pw}" height="{ph}"/>')
        if p["title"]:
            out.append(f'<text class="panel-title" x="{x0 + pw / 2}" y="{top - 8}" '
                       f'text-anchor="middle">{_esc(p["title"])}</text>')
        for t in yticks:
            out.append(f'<line class="grid" x1="{x0}" x2="{x0 + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
            if k == 0:
                out.append(f'<text class="tick" x="{x0 - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        for t in xticks:
            out.append(f'<text class="tick" x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{t:g}</text>')
        for s in p["series"]:
            colour, sid = colours[s["label"]], _esc(s["label"])
            dash = ' stroke-dasharray="5 3"' if s["dashed"] else ""
            pts = [(x, y, e) for x, y, e in zip(s["x"], s["y"], s["err"] or [None] * len(s["x"]))
                   if x is not None and y is not None and (x > 0 or not logx)]
            out.append(f'<g class="series" data-series="{sid}">')
            if len(pts) > 1:
                d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in pts)
                out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
            for x, y, e in pts:
                if e:
                    out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(y - e):.1f}" '
                               f'y2="{py(y + e):.1f}" stroke="{colour}" stroke-width="1"/>')
                where = f"{p['title']} · " if p["title"] else ""
                tip = f"{where}{s['label']}: {data.get('xlabel') or 'x'} = {_num(x)}, value {_num(y, 3)}" + (
                    f" ± {_num(e, 2)}" if e else "")
                out.append(f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}" '
                           f'data-tip="{_esc(tip)}"><title>{_esc(tip)}</title></circle>')
            out.append("</g>")
        out.append(f'<text class="axis" x="{x0 + pw / 2}" y="{height - 6}" text-anchor="middle">'
                   f'{_esc(data.get("xlabel", ""))}</text>')
    out.append(f'<text class="axis" transform="rotate(-90 12 {top + ph / 2})" x="12" y="{top + ph / 2}" '
               f'text-anchor="middle">{_esc(data.get("ylabel", ""))}</text>')
    out.append("</svg>")
    labels = list(dict.fromkeys(s["label"] for p in panels for s in p["series"]))
    dashed = {s["label"]: s["dashed"] for p in panels for s in p["series"]}
    legend = "".join(
        f'<button type="button" class="toggle" aria-pressed="true" data-chart="{cid}" '
        f'data-series="{_esc(label)}"><span class="swatch{" dashed" if dashed[label] else ""}" '
        f'style="border-color:{colours[label]}"></span>{_esc(label)}</button>'
        for label in labels)
    return (f'<div class="legend" title="click a series to show or hide it">{legend}</div>'
            + "".join(out))


def figure(data: dict, chart_id: str) -> str:
    """The chart a sidecar describes (``kind``: ``heatmap`` or ``lines``)."""
    if data.get("kind") == "heatmap":
        return heatmap_svg(data, chart_id)
    if data.get("kind") == "lines":
        return lines_svg(data, chart_id)
    raise ValueError(f"no chart for a sidecar of kind {data.get('kind')!r}")

