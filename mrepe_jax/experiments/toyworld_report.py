"""report.md for the ToyWorld pipeline: one section per stage, tables in the paper's format."""

from __future__ import annotations

import numpy as np

from mrepe_jax.experiments import toyworld_report_align as align
from mrepe_jax.experiments import toyworld_report_control as control
from mrepe_jax.experiments import toyworld_report_costs as costs
from mrepe_jax.experiments import toyworld_report_generative as generative
from mrepe_jax.experiments.toyworld_report_claims import claims_section
from mrepe_jax.report.markdown import fmt, section, table

MODALITIES = ("vision", "text", "audio")


def world_name(world: dict) -> str:
    """"hard" when any of ToyWorld's difficulty knobs is on, else "default"."""
    knobs = (world.get("spurious", 0), world.get("caption_noise", 0), world.get("distractors", 0))
    return "hard" if any(knobs) else "default"


def zero_shot_section(results: dict, world: str = "") -> str:
    acc = results["zero_shot"]
    families = list(next(iter(acc.values())))
    rows = [[f] + [acc[m][f] for m in MODALITIES] for f in families]
    rows.append(["minimum"] + [min(acc[m].values()) for m in MODALITIES])
    t = results["training"]
    return section(
        "ToyWorld CLIP: held-out zero-shot accuracy" + (f" — {world}" if world else ""),
        f"Tri-modal CLIP trained {t['steps']} steps (final loss {fmt(t['final_loss'])}); training took "
        f"{t['trained_in_seconds']} s. Accuracy is the argmax of cosine similarity between each "
        "test sample's embedding and the family's class-prompt embeddings "
        f"({results['config']['eval']['num_test']} test samples).",
        table(["family", "image", "text", "audio"], rows),
    )


def render(results: dict) -> str:
    m = results["machine"]
    header = (
        "# mrepe_jax — ToyWorld report\n\n"
        f"Run on {m['platform']} ({m['cpu_count']} CPUs, devices {', '.join(m['devices'])}), "
        f"jax {m['jax']}, {m['date']}."
    )
    # Plots of a run with the CLIP retrained per seed are the first seed's (``plot_dir``).
    prefix = results.get("plot_dir", "")
    parts = [header, zero_shot_section(results)]
    if "captioner" in results:
        parts.append(generative.captioner_section(results["captioner"]))
    parts += [table1_section(results), causal_section(results, prefix)]
    name = world_name(results["config"]["world"])
    parts += [align.table2(results["alignment"], name),
              align.transfer_table(results["alignment"], name)]
    if "architectures" in results:
        parts.append(generative.architectures_section(results["architectures"]))
    parts += [f"![alignment learning curves]({prefix}align_learning_curves.png)",
              *_control_sections(results, name, prefix)]
    if "hard" in results:
        hard = results["hard"]
        parts += [zero_shot_section({**hard, "config": results["config"]}, "hard world"),
                  table1_section(hard, "hard world"), align.table2(hard["alignment"], "hard"),
                  align.transfer_table(hard["alignment"], "hard"),
                  *_control_sections(hard, "hard", "hard/" + hard.get("plot_dir", "")),
                  align.hard_comparison(results, hard)]
    return "\n\n".join(parts) + "\n"


def _control_sections(results: dict, name: str, prefix: str) -> list[str]:
    """Tables 3-6 and the Claims of one world (``prefix``: where its plots are, from the report)."""
    captioner = results.get("captioner")
    return [control.table3(results["control"], name, captioner),
            f"![steering dose-response, {name} world]({prefix}steering_dose_response.png)",
            control.table4(results["safety"], name, captioner), costs.table5(results, name),
            costs.table6(results, name), claims_section(results, name)]


def _mean_std(values) -> str:
    v = np.asarray(list(values), np.float64)
    return f"{v.mean():.3f} ± {v.std():.3f}"


def table1_section(results: dict, world: str = "") -> str:
    ident = results["identification"]
    towers = ("text", "vision", "audio")
    rows = []
    for key, name in (("baseline", "ToyWorld CLIP (Baseline)"), ("mrepe", "ToyWorld CLIP + MRepE")):
        per_tower = [list(ident[key][t].values()) for t in towers]
        rows.append([name] + [_mean_std(v) for v in per_tower] + [_mean_std(sum(per_tower, []))])
    families = list(ident["baseline"]["vision"])
    detail = [[f] + [f"{ident['baseline'][t][f]:.3f} / {ident['mrepe'][t][f]:.3f} "
                     f"(`{ident['mrepe_site'][t][f]}`)" for t in towers] for f in families]
    direction = [[f] + [f"{ident['direction_auroc'][t][f]:.3f} (`{ident['direction_site'][t][f]}`)"
                        for t in towers] for f in families]
    return section(
        "Table 1: representation identification" + (f" — {world}" if world else ""),
        "Score: held-out one-vs-rest AUROC of the eq 1 prototype similarity, macro-averaged over a "
        "family's values (`reading.prototypes.identification_score`); mean ± std over the "
        f"{len(families)} concept families. Baseline: prototypes at the output embedding "
        "(`proj`). MRepE: prototypes at the site chosen on the validation split among every "
        "layer's residual stream, `pooled` and `proj`.",
        table(["Model", "Text", "Image", "Audio", "Average"], rows),
        "Per family, baseline / MRepE (selected site):",
        table(["family", "text", "image", "audio"], detail),
        "Mean-difference directions (eq 6, value vs rest, fitted on train): held-out AUROC of the "
        "projection, at the best site on validation (target >= 0.95):",
        table(["family", "text", "image", "audio"], direction),
    )


def causal_section(results: dict, prefix: str = "") -> str:
    causal = results["causal"]
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
        "Contrast pairs differ in one family (noising: the corrupt value patched into the clean "
        "run, one residual position at a time, `resid_pre` of every layer). Metric: cosine to the "
        "clean value's class prompt minus cosine to the corrupt value's. Top cell: largest |effect|, "
        "with a 1,000-resample bootstrap 95% CI over pairs. "
        f"Spearman(exact, attribution) over all cells: mean {np.mean(rhos):.3f}, min {np.min(rhos):.3f} "
        "(target >= 0.8).",
        table(["tower", "family", "Spearman", "total effect", "top cell", "top effect [95% CI]"], rows),
        "Heatmaps (layer x position; vision also layer x head in `patching_vision_*_layer_head.png`):",
        images,
    )
