"""Concept and feature pages of ``report.html`` (pure: results in, markup out). A page is a
``<section class="page" id=...>`` that the stylesheet shows alone when its ``#id`` is the URL's
fragment, so links between pages work from disk with no script and no server.

Concept pages (``#concept-{family}``, one section per tower ``#concept-{tower}-{family}``): the
eq 1 and eq 6 AUROCs of ``results["identification"]`` per tower (and the hard world's), zero-shot
accuracy, the eq 2 patching of that family where it was run, and the SAE features that detect its
values. Feature pages (``#feature-{architecture}-{index}``): what each such feature detects."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping

from mrepe_jax.report.html.markdown import slug

#: The report's column name of each tower (``report.stage_tables.COLUMNS``) and its tower.
TOWER_OF_COLUMN = {"text": "text", "image": "vision", "audio": "audio"}


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def concept_id(family: str, tower: str | None = None) -> str:
    return f"concept-{slug(tower)}-{slug(family)}" if tower else f"concept-{slug(family)}"


def feature_id(architecture: str, index: int) -> str:
    return f"feature-{slug(architecture)}-{int(index)}"


_KEYS = ("baseline", "mrepe", "mrepe_site", "direction_auroc", "direction_site")


def _identification(results: Mapping) -> Mapping | None:
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
    ident = _identification(results)
    out: dict[str, list[str]] = {}
    if ident is None:
        return out
    for tower, fams in ident["baseline"].items():
        for family in fams:
            out.setdefault(family, []).append(tower)
    return out


def table(headers, rows, cls: str = "sortable") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _bars(items: list[tuple[str, float | None, str]], label: str) -> str:
    """Horizontal bars in [0, 1] (AUROCs), each value on hover, a mark at chance (0.5)."""
    w, left, bh = 300, 150, 18
    height = 8 + bh * len(items) + 18
    out = [f'<svg class="chart bars" viewBox="0 0 {left + w + 50} {height}" width="{left + w + 50}" '
           f'height="{height}" role="img" aria-label="{_esc(label)}">']
    base = 4 + bh * len(items)
    out.append(f'<line class="grid" x1="{left + w / 2}" x2="{left + w / 2}" y1="2" y2="{base}" '
               'stroke-dasharray="3 2" style="stroke:#888"/>')  # chance, under the bars
    for i, (name, v, note) in enumerate(items):
        y = 4 + i * bh
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 13}" text-anchor="end">{_esc(name)}</text>')
        if v is not None:
            tip = f"{name}: {label} {v:.3f}" + (f" ({note})" if note else "")
            out.append(f'<rect class="point" x="{left}" y="{y + 2}" width="{max(v, 0) * w:.1f}" height="{bh - 5}" '
                       f'fill="#0072B2" data-tip="{_esc(tip)}"><title>{_esc(tip)}</title></rect>')
            out.append(f'<text class="tick" x="{left + max(v, 0) * w + 4:.1f}" y="{y + 13}">{v:.3f}</text>')
    for t in (0, 0.5, 1):
        out.append(f'<text class="tick" x="{left + t * w}" y="{base + 12}" text-anchor="middle">{t:g}</text>')
    out.append("</svg>")
    return "".join(out)


def _identification_rows(ident: Mapping, tower: str, family: str) -> list[str] | None:
    if family not in ident["baseline"].get(tower, {}):
        return None
    return [_f(ident["baseline"][tower][family]), _f(ident["mrepe"][tower][family]),
            f"<code>{_esc(ident['mrepe_site'][tower][family])}</code>",
            _f(ident["direction_auroc"].get(tower, {}).get(family)),
            f"<code>{_esc(ident['direction_site'].get(tower, {}).get(family, '-'))}</code>"]


def _features_of(results: Mapping, family: str) -> list[list[str]]:
    f = results.get("features")
    if not isinstance(f, Mapping) or "architectures" not in f:
        return []
    rows = []
    directions = f.get("directions", {}).get("per_value", {})
    values = dict.fromkeys(v for r in f["architectures"].values() for v in r.get("per_value", {}).get(family, {}))
    for value in values:
        for arch, r in f["architectures"].items():
            best = r.get("per_value", {}).get(family, {}).get(value)
            if best is None:
                continue
            link = f'<a href="#{feature_id(arch, best["feature"])}">{_esc(arch)} #{int(best["feature"])}</a>'
            rows.append([_esc(value), link, _f(best.get("auroc")), _f(best.get("probe_auroc")),
                         _f(directions.get(f"{family}={value}"))])
    return rows


def concept_page(results: Mapping, family: str, towers: list[str],
                 figure: Callable[[str, str], str]) -> str:
    """The page of one concept family. ``figure(path, chart_id)``: a chart (or image) of the
    workdir file at ``path`` (relative), or "" when there is none."""
    ident = _identification(results)
    hard = _identification(results.get("hard", {}) or {})
    parts = [f'<section class="page" id="{concept_id(family)}">',
             '<p><a href="#top">&larr; back to the report</a> · <a href="#concepts">all concepts</a></p>',
             f"<h1>Concept: {_esc(family)}</h1>",
             "<p>Held-out one-vs-rest AUROC of the eq 1 prototype similarity (Baseline and MRepE sites as "
             "in Table 1: MRepE's is chosen on validation) and of the eq 6 mean-difference direction's "
             "projection (at its best site on validation), macro-averaged over the family's values. "
             "0.5 is chance.</p>"]
    rows = []
    for tower in towers:
        cells = _identification_rows(ident, tower, family)
        if cells:
            rows.append([f'<a href="#{concept_id(family, tower)}">{_esc(tower)}</a>', *cells])
        hard_cells = hard and _identification_rows(hard, tower, family)
        if hard_cells:
            rows.append([f"{_esc(tower)} (hard world)", *hard_cells])
    parts.append(table(["tower", "Baseline AUROC", "MRepE AUROC", "MRepE site", "direction AUROC",
                        "direction site"], rows))
    parts.append(_bars([(t, ident["direction_auroc"].get(t, {}).get(family), ident["direction_site"]
                         .get(t, {}).get(family, "")) for t in towers], "direction AUROC"))
    parts.append('<p class="missing">The AUROC at every layer and site (not only the best one) is not '
                 "in results.json yet.</p>")
    zero_shot = results.get("zero_shot", {})
    for tower in towers:
        parts.append(f'<h2 id="{concept_id(family, tower)}">{_esc(tower)} tower</h2>')
        cards = [("Baseline AUROC", ident["baseline"][tower].get(family)),
                 ("MRepE AUROC", ident["mrepe"][tower].get(family)),
                 ("direction AUROC", ident["direction_auroc"].get(tower, {}).get(family))]
        if isinstance(zero_shot.get(tower), Mapping) and family in zero_shot[tower]:
            cards.append(("zero-shot accuracy", zero_shot[tower][family]))
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="v">{_f(v)}</div><div class="k">{_esc(k)}</div></div>'
            for k, v in cards) + "</div>")
        causal = results.get("causal", {}).get(tower, {}).get(family)
        if isinstance(causal, Mapping) and "top_cell" in causal:
            top = causal["top_cell"]
            parts.append(
                f"<h3>Causal effects (eq 2)</h3><p>Exact patching of <code>resid_pre</code>, "
                f"{causal.get('num_pairs', '?')} contrast pairs: total effect {_f(causal['total_effect'], 4)}; "
                f"top cell layer {top['layer']}, position {top['position']}: {top['effect']:.3g} "
                f"[{top['ci95'][0]:.3g}, {top['ci95'][1]:.3g}]; Spearman(exact, attribution) "
                f"{_f(causal['spearman_exact_vs_attribution'])}.</p>")
            prefix = results.get("plot_dir", "")
            for kind in ("layer_position", "layer_head"):
                parts.append(figure(f"{prefix}patching_{tower}_{family}_{kind}.png",
                                    f"{concept_id(family, tower)}-{kind.replace('_', '-')}"))
    features = _features_of(results, family)
    if features:
        parts += ["<h2>SAE features for its values</h2>",
                  "<p>Per value: each architecture's best feature (chosen on validation), its test AUROC, "
                  "the sparse probe's, and the eq 6 direction's for comparison.</p>",
                  table(["value", "feature", "feature AUROC", "probe AUROC", "eq 6 direction AUROC"], features)]
    parts.append('<p class="missing">Not yet here (need data results.json does not hold): the top- and '
                 "bottom-scoring test examples with patch heatmaps of the direction's projection, and "
                 "steering before/after images and captions per concept (Table 3 averages over targets).</p>")
    parts.append("</section>")
    return "".join(parts)


def feature_pages(results: Mapping) -> list[tuple[str, str, str]]:
    """``[(id, name, page markup)]``: one page per SAE feature that is some concept value's best feature."""
    f = results.get("features")
    if not isinstance(f, Mapping) or "architectures" not in f:
        return []
    pages = []
    directions = f.get("directions", {}).get("per_value", {})
    for arch, r in f["architectures"].items():
        detects: dict[int, list] = {}
        for family, values in r.get("per_value", {}).items():
            for value, best in values.items():
                detects.setdefault(int(best["feature"]), []).append((family, value, best))
        for index in sorted(detects):
            fid = feature_id(arch, index)
            rows = [[f'<a href="#{concept_id(fam)}">{_esc(fam)}</a>', _esc(val), _f(b.get("auroc")),
                     _f(b.get("probe_auroc")), _f(directions.get(f"{fam}={val}"))]
                    for fam, val, b in detects[index]]
            steer = f.get("steering", {})
            steering = ""
            if steer.get("architecture") == arch:
                add = steer["add"]
                steering = ("<h2>Steering (this SAE, all recovered features)</h2>" + table(
                    ["intervention", "success", "collateral"],
                    [[f"add decoder row, alpha = {_esc(a)}", _f(add['success'][a][0]), _f(add['collateral'][a][0])]
                     for a in add["success"]]
                    + [["clamp latent", _f(steer["clamp"]["success"]), _f(steer["clamp"]["collateral"])]]))
            pages.append((fid, f"{arch} #{index}", "".join([
                f'<section class="page" id="{fid}">',
                '<p><a href="#top">&larr; back to the report</a> · <a href="#features">all features</a></p>',
                f"<h1>SAE feature {_esc(arch)} #{index}</h1>",
                f"<p>{_esc(arch)} SAE of {_esc(f.get('latents', '?'))} latents at <code>{_esc(f.get('site', '?'))}"
                f"</code>, L0 {_f(r.get('l0'), 2)}, FVU {_f(r.get('fvu'))}. The concept values this feature "
                "detects best (test AUROC of its activation; the eq 6 direction's beside it):</p>",
                table(["family", "value", "feature AUROC", "probe AUROC", "eq 6 direction AUROC"], rows),
                steering,
                '<p class="missing">Not yet here (not in results.json): top-activating examples with patch '
                "heatmaps, the activation histogram, and the decoder direction's top words through the "
                "text tower.</p></section>"])))
    return pages


def index_lists(results: Mapping) -> str:
    """The report's lists of concept and feature pages (anchors ``#concepts``, ``#features``)."""
    fams = families(results)
    out = []
    if fams:
        out.append('<h2 id="concepts">Concept pages</h2><ul class="concept-list">' + "".join(
            f'<li><a class="concept" href="#{concept_id(f)}">{_esc(f)}</a> ('
            + ", ".join(f'<a href="#{concept_id(f, t)}">{_esc(t)}</a>' for t in towers) + ")</li>"
            for f, towers in fams.items()) + "</ul>")
    pages = feature_pages(results)
    if pages:
        out.append('<h2 id="features">Feature pages</h2><ul>' + "".join(
            f'<li><a href="#{fid}">{_esc(name)}</a></li>' for fid, name, _ in pages) + "</ul>")
    return "".join(out)
