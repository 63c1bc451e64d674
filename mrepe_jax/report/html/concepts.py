"""The concept pages of ``report.html`` (``#concept-{family}``, a section per tower
``#concept-{tower}-{family}``): the eq 1 and eq 6 AUROCs of ``results["identification"]`` per tower
(and the hard world's), at the best site and at every candidate site (a chart per tower),
zero-shot accuracy, the eq 2 patching of that family where it was run, the SAE features that
detect its values, and ``results["gallery"]`` (``experiments.toyworld.gallery``): the top- and
bottom-scoring test examples with per-token heat, and steering before and after (eq 5)."""

from __future__ import annotations

from collections.abc import Mapping

from mrepe_jax.report.html import gallery as gallery_page
from mrepe_jax.report.html.features import world_label
from mrepe_jax.report.html.features import worlds as feature_worlds
from mrepe_jax.report.html.pages import (
    Files,
    bars,
    concept_id,
    esc,
    families,
    feature_id,
    fmt,
    identification,
    table,
)
from mrepe_jax.report.html.sites import by_site, sites_chart


def files(results: Mapping) -> list[str]:
    """Workdir files (relative paths) the concept pages show: the patching heatmaps and the
    gallery's thumbnails."""
    prefix = results.get("plot_dir", "")
    return [f"{prefix}patching_{tower}_{family}_{k}.png" for family, towers in families(results).items()
            for tower in towers for k in ("layer_position", "layer_head")] + gallery_page.files(results)


def _identification_rows(ident: Mapping, tower: str, family: str) -> list[str] | None:
    if family not in ident["baseline"].get(tower, {}):
        return None
    return [fmt(ident["baseline"][tower][family]), fmt(ident["mrepe"][tower][family]),
            f"<code>{esc(ident['mrepe_site'][tower][family])}</code>",
            fmt(ident["direction_auroc"].get(tower, {}).get(family)),
            f"<code>{esc(ident['direction_site'].get(tower, {}).get(family, '-'))}</code>"]


def _features_of(results: Mapping, family: str) -> list[list[str]]:
    rows = []
    for world, f, _ in feature_worlds(results):
        directions = f.get("directions", {}).get("per_value", {})
        values = dict.fromkeys(v for r in f["architectures"].values() for v in r.get("per_value", {}).get(family, {}))
        for value in values:
            for arch, r in f["architectures"].items():
                best = r.get("per_value", {}).get(family, {}).get(value)
                if best is None:
                    continue
                index = int(best["feature"])
                link = f'<a href="#{feature_id(arch, index, world)}">{esc(arch)} #{index}</a>'
                rows.append([esc(value + world_label(world)), link, fmt(best.get("auroc")),
                             fmt(best.get("probe_auroc")), fmt(directions.get(f"{family}={value}"))])
    return rows


def concept_page(results: Mapping, family: str, towers: list[str], files: Files) -> str:
    """The page of one concept family; ``files``: the workdir files ``files(results)`` named."""
    ident = identification(results)
    hard = identification(results.get("hard", {}) or {})
    parts = [f'<section class="page" id="{concept_id(family)}">',
             '<p><a href="#top">&larr; back to the report</a> · <a href="#concepts">all concepts</a></p>',
             f"<h1>Concept: {esc(family)}</h1>",
             "<p>Held-out one-vs-rest AUROC of the eq 1 prototype similarity (Baseline and MRepE sites as "
             "in Table 1: MRepE's is chosen on validation) and of the eq 6 mean-difference direction's "
             "projection (at its best site on validation), macro-averaged over the family's values. "
             "0.5 is chance.</p>"]
    rows = []
    for tower in towers:
        cells = _identification_rows(ident, tower, family)
        if cells:
            rows.append([f'<a href="#{concept_id(family, tower)}">{esc(tower)}</a>', *cells])
        hard_cells = hard and _identification_rows(hard, tower, family)
        if hard_cells:
            rows.append([f"{esc(tower)} (hard world)", *hard_cells])
    parts.append(table(["tower", "Baseline AUROC", "MRepE AUROC", "MRepE site", "direction AUROC",
                        "direction site"], rows))
    parts.append(bars([(t, ident["direction_auroc"].get(t, {}).get(family), ident["direction_site"]
                         .get(t, {}).get(family, "")) for t in towers], "direction AUROC"))
    charts = [sites_chart(f"{tower}: held-out AUROC per site", series, f"{concept_id(family, tower)}-sites")
              for tower in towers if (series := by_site(results, tower, family))]
    if charts:
        parts.append("<h2>AUROC at every site</h2><p>Held-out (test) AUROC of the eq 6 direction's projection "
                     "and of the eq 1 prototype similarity at every candidate site, in layer order (each "
                     "layer's residual stream averaged over tokens, then <code>pooled</code> and "
                     "<code>proj</code>); the dashed line is chance. Hover a point for its value; click a "
                     "legend entry to hide its series.</p>" + "".join(charts))
    else:
        parts.append('<p class="missing">The AUROC at every layer and site (not only the best one) is not '
                     "in results.json for this run.</p>")
    zero_shot = results.get("zero_shot", {})
    for tower in towers:
        parts.append(f'<h2 id="{concept_id(family, tower)}">{esc(tower)} tower</h2>')
        cards = [("Baseline AUROC", ident["baseline"][tower].get(family)),
                 ("MRepE AUROC", ident["mrepe"][tower].get(family)),
                 ("direction AUROC", ident["direction_auroc"].get(tower, {}).get(family))]
        if isinstance(zero_shot.get(tower), Mapping) and family in zero_shot[tower]:
            cards.append(("zero-shot accuracy", zero_shot[tower][family]))
        parts.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="v">{fmt(v)}</div><div class="k">{esc(k)}</div></div>'
            for k, v in cards) + "</div>")
        causal = results.get("causal", {}).get(tower, {}).get(family)
        if isinstance(causal, Mapping) and "top_cell" in causal:
            top = causal["top_cell"]
            parts.append(
                f"<h3>Causal effects (eq 2)</h3><p>Exact patching of <code>resid_pre</code>, "
                f"{causal.get('num_pairs', '?')} contrast pairs: total effect {fmt(causal['total_effect'], 4)}; "
                f"top cell layer {top['layer']}, position {top['position']}: {top['effect']:.3g} "
                f"[{top['ci95'][0]:.3g}, {top['ci95'][1]:.3g}]; Spearman(exact, attribution) "
                f"{fmt(causal['spearman_exact_vs_attribution'])}.</p>")
            prefix = results.get("plot_dir", "")
            for kind in ("layer_position", "layer_head"):
                parts.append(files.figure(f"{prefix}patching_{tower}_{family}_{kind}.png",
                                    f"{concept_id(family, tower)}-{kind.replace('_', '-')}"))
        parts.append(gallery_page.tower_section(results, tower, family, files))
    features = _features_of(results, family)
    if features:
        parts += ["<h2>SAE features for its values</h2>",
                  "<p>Per value: each architecture's best feature (chosen on validation), its test AUROC, "
                  "the sparse probe's, and the eq 6 direction's for comparison.</p>",
                  table(["value", "feature", "feature AUROC", "probe AUROC", "eq 6 direction AUROC"], features)]
    parts.append("</section>")
    return "".join(parts)
