"""report.md of a dual-encoder experiment (``pipeline``: CLIP, CLAP): ToyWorld's report shape, with
the model, its weights' hash and the data named at the top, in the words of its modality
(``results["modality"]``)."""

from __future__ import annotations

import os

import numpy as np

from mrepe_jax.report.markdown import fmt, section, table
from mrepe_jax.report.stage_tables import causal_section, table1_section
from mrepe_jax.stages.dual_encoder import decomposition


def pairs(mod: dict) -> str:
    return (f"{mod['noun'].capitalize()} pairs: two test {mod['plural']} of different classes (the "
            "family's values). Caption pairs: a test caption naming one value of the family and the "
            "same caption with that word swapped for another value.")


def render(results: dict) -> str:
    m, model, data, mod = results["machine"], results["model"], results["data"], results["modality"]
    header = (
        f"# mrepe_jax — {model['name']}\n\n"
        f"Model `{model['name']}` ({model['dtype']}), weights sha256 `{model['weights_sha256']}`.\n\n"
        f"{mod['plural'].capitalize()}: {data['labelled']}.\n\nCaptions: {data['captions']}.\n\n"
        f"Run on {m['platform']} ({m['cpu_count']} CPUs, devices {', '.join(m['devices'])}), "
        f"jax {m['jax']}, {m['date']}, in {results['seconds']} s."
    )
    labelled = data["labelled_captions"]
    classes = results["config"][mod["section"]]["classes"]
    parts = [
        header,
        section("Zero-shot accuracy", f"Test {mod['plural']}, argmax of cosine similarity to the class "
                f"prompts (templates averaged), among the {len(classes)} classes "
                f"({', '.join(classes)}). 95% CI: Wilson score interval over the test {mod['plural']}; "
                "chance: one over the number of classes.",
                table(["family", f"{mod['noun']} accuracy", "95% CI", f"test {mod['plural']}", "chance"],
                      [[f, d["accuracy"], f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]", d["num_test"],
                        d["chance"]] for f, d in results["zero_shot_detail"][mod["tower"]].items()])),
        table1_section(results["identification"], model["name"], towers=("text", mod["tower"])),
        section("Labelled captions per split", "A caption counts for a family when it names "
                "exactly one of the family's words.",
                table(["family", "train", "validation", "test"],
                      [[f, c["train"], c["validation"], c["test"]] for f, c in labelled.items()])),
        alignment_section(results["alignment"], mod),
        steering_section(results["steering"], mod),
        causal_section(results["causal"], pairs=pairs(mod)),
        section(f"Where the {mod['noun']} embedding comes from (TextSpan)",
                *decomposition.report_parts(results["decomposition"])),
        section("Direction bundles", "Each value's eq 6 direction at the family's best site, with "
                "provenance (`reading.bundles.load_bundle`):",
                "\n".join(f"- `{p}`" for p in results["bundles"])),
    ]
    return "\n\n".join(parts) + "\n"


def alignment_section(align: dict, mod: dict) -> str:
    """Table 2's text-modality row (CMC, eq 8) with every map kind, mean ± std over the map seeds."""
    row, noun = align[mod["pair"]], mod["noun"]
    kinds = [k for k in align["map_kinds"] if k in row]
    cells = [fmt(row["baseline"])] + [f"{np.mean(row[k]):.3f} ± {np.std(row[k]):.3f}" for k in kinds]
    return section(
        "Table 2: cross-modal consistency (CMC, eq 8)",
        f"Test {mod['plural']} paired with a caption naming their class ({align['num_test']} pairs; "
        f"maps fitted on {align['num_train']}, seeds {align['seeds']}). f: the zero-shot distribution "
        "over the class prompts; sim = 1 - JSD (bits). Baseline: the model as it is. Map rows: a "
        f"text -> {noun} map (eq 4 for `mrepe`, trained with InfoNCE, eq 3) in the caption's path "
        f"to the zero-shot head. p (MRepE vs Baseline, paired permutation test): {row['p_value']:.4f}.",
        table(["pair", "Baseline", *kinds], [[mod["pair"], *cells]]),
    )


def steering_section(steer: dict, mod: dict) -> str:
    """Table 3's None, AP and Direct (eq 5) rows per tower and family."""
    first = next(iter(steer[mod["tower"]].values()))
    alphas = [str(a) for a in first["alphas"]]
    rows = [[tower, family, r["num_inputs"], r["none"], r["ap"], *[r["direct"][a] for a in alphas]]
            for tower, fams in steer.items() for family, r in fams.items()]
    return section(
        "Table 3: intervention success rates",
        "Each value of a family is a target; held-out inputs of the tower are steered toward it at "
        f"the last layer's `resid_post` (`{first['site']}` for {mod['plural']}), and success is the "
        "share of inputs of other values whose zero-shot prediction among the family's prompts "
        "becomes the target, averaged over targets. None: no intervention. AP: what the readout "
        f"pools ({mod['readout']} for {mod['plural']}, {mod['text_readout']} for captions) replaced at that site by "
        "the target's mean activation there on the train split. Direct (eq 5): the eq 6 direction "
        "added on every token, alpha in "
        "units of the site's mean norm. The attention (eq 7), combined and FT rows and collateral "
        "damage are in the ToyWorld report (they need several labelled families per input).",
        table(["tower", "family", "inputs", "None", "AP", *[f"Direct a={a}" for a in alphas]], rows),
        "Per target value (the same columns):",
        table(["tower", "family", "target", "None", "AP", *[f"Direct a={a}" for a in alphas]],
              [[tower, family, target, t["none"], t["ap"], *[t["direct"][a] for a in alphas]]
               for tower, fams in steer.items() for family, r in fams.items()
               for target, t in r["per_target"].items()]),
    )


def summary(results: dict, workdir) -> str:
    """What ``launch.run`` prints at the end."""
    ident, mod = results["identification"], results["modality"]
    rows = [[tower, float(np.mean(list(ident["baseline"][tower].values()))),
             float(np.mean(list(ident["mrepe"][tower].values()))),
             float(np.mean(list(ident["direction_auroc"][tower].values())))]
            for tower in (mod["tower"], "text")]
    zero_shot = ", ".join(f"{f} {a:.3f}" for f, a in results["zero_shot"][mod["tower"]].items())
    return "\n".join([f"{results['model']['name']}: zero-shot {mod['noun']} accuracy {zero_shot}",
                      table(["tower", "Table 1 Baseline", "Table 1 MRepE", "direction AUROC"], rows),
                      f"report: {os.path.join(os.fspath(workdir), 'report.md')}"])
