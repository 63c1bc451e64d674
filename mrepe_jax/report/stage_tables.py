"""Report sections of the shared stages (``mrepe_jax.stages``): Table 1 and the causal effects, in
the paper's format, for any model and data (pure: results in, markdown out)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mrepe_jax.report.markdown import section, table

#: Report column of each tower.
COLUMNS = {"text": "Text", "vision": "Image", "audio": "Audio"}


def _mean_std(values) -> str:
    """``mean ± std`` over families; one family is its figure alone (a std over one is no spread)."""
    v = np.asarray(list(values), np.float64)
    return f"{v[0]:.3f}" if v.size == 1 else f"{v.mean():.3f} ± {v.std():.3f}"


def table1_section(ident: Mapping, model: str, towers=("text", "vision", "audio"), world: str = "") -> str:
    """Table 1 (eq 1 prototypes, Baseline vs MRepE) and the eq 6 direction AUROCs of the
    identification stage, one column per tower; a tower's families may differ from another's."""
    rows = []
    for key, name in (("baseline", f"{model} (Baseline)"), ("mrepe", f"{model} + MRepE")):
        per_tower = [list(ident[key][t].values()) for t in towers]
        rows.append([name] + [_mean_std(v) for v in per_tower] + [_mean_std(sum(per_tower, []))])
    families = list(dict.fromkeys(f for t in towers for f in ident["baseline"][t]))

    def detail_cell(t, f):  # a tower's families may differ from another's: "-" where it has none
        if f not in ident["baseline"][t]:
            return "-"
        return f"{ident['baseline'][t][f]:.3f} / {ident['mrepe'][t][f]:.3f} (`{ident['mrepe_site'][t][f]}`)"

    def direction_cell(t, f):
        if f not in ident["direction_auroc"][t]:
            return "-"
        return f"{ident['direction_auroc'][t][f]:.3f} (`{ident['direction_site'][t][f]}`)"

    detail = [[f] + [detail_cell(t, f) for t in towers] for f in families]
    direction = [[f] + [direction_cell(t, f) for t in towers] for f in families]
    columns = [COLUMNS[t] for t in towers]
    return section(
        "Table 1: representation identification" + (f" — {world}" if world else ""),
        "Score: held-out one-vs-rest AUROC of the eq 1 prototype similarity, macro-averaged over a "
        "family's values (`stages.identification`); mean ± std over the tower's concept families "
        "(a tower of one family shows its figure). "
        "Baseline: prototypes at the output embedding (`proj`). MRepE: prototypes at the site "
        "chosen on the validation split among every layer's residual stream, `pooled` and `proj`.",
        table(["Model", *columns, "Average"], rows),
        "Per family, baseline / MRepE (selected site):",
        table(["family", *[c.lower() for c in columns]], detail),
        "Mean-difference directions (eq 6, value vs rest, fitted on train): held-out AUROC of the "
        "projection, at the best site on validation (target >= 0.95: the level this project requires "
        "on ToyWorld, whose concepts are known to be present; on real data, a reference):",
        table(["family", *[c.lower() for c in columns]], direction),
    )


PROMPT_METRIC = "cosine to the clean value's class prompt minus cosine to the corrupt value's"


def causal_section(causal: Mapping, prefix: str = "", pairs: str = "", metric: str = PROMPT_METRIC) -> str:
    """The eq 2 section: exact vs attribution patching per tower and contrast, and the heatmaps
    (``prefix``: where the plots are, relative to the report). ``pairs`` says how pairs were made,
    ``metric`` what the effects are effects on."""
    rows, rhos = [], []
    for tower, fams in causal.items():
        for family, r in fams.items():
            top = r["top_cell"]
            rhos.append(r["spearman_exact_vs_attribution"])
            rows.append([tower, family, r["spearman_exact_vs_attribution"], r["total_effect"],
                         f"L{top['layer']} p{top['position']}",
                         (top["effect"], top["ci95"][0], top["ci95"][1])])
    images = "\n".join(f"![{t} {f}]({prefix}patching_{t}_{f}_layer_position.png)"
                       for t, fams in causal.items() for f in fams)
    return section(
        "Causal effects (eq 2): exact vs attribution patching",
        (pairs or "Contrast pairs differ in one family.") + " Noising: the corrupt value patched "
        "into the clean run, one residual position at a time, `resid_pre` of every layer. Metric: "
        f"{metric}. Top cell: largest |effect|, with a bootstrap 95% CI over pairs. "
        f"Spearman(exact, attribution) over all cells: mean {np.mean(rhos):.3f}, min {np.min(rhos):.3f} "
        "(target >= 0.8: the agreement at which attribution patching can stand in for exact "
        "patching as a screen, required on ToyWorld; on real data, a reference).",
        table(["tower", "contrast", "Spearman", "total effect", "top cell", "top effect [95% CI]"], rows),
        "Heatmaps (layer x position" + ("; the vision tower also layer x head in "
                                        "`patching_vision_*_layer_head.png`" if "vision" in causal else "") + "):",
        images,
    )
