"""report.md of the CLIP experiment (``experiments/clip/pipeline.py``): ToyWorld's report shape, with the
model, its weights' hash and the data named at the top."""

from __future__ import annotations

import os

import numpy as np

from mrepe_jax.report.markdown import fmt, section, table
from mrepe_jax.report.stage_tables import causal_section, table1_section

PAIRS = ("Image pairs: two test images of different classes (the family's values). Caption pairs: "
         "a test caption naming one value of the family and the same caption with that word "
         "swapped for another value.")


def render(results: dict) -> str:
    m, model, data = results["machine"], results["model"], results["data"]
    header = (
        f"# mrepe_jax — {model['name']}\n\n"
        f"Model `{model['name']}` ({model['dtype']}), weights sha256 `{model['weights_sha256']}`.\n\n"
        f"Images: {data['images']}.\n\nCaptions: {data['captions']}.\n\n"
        f"Run on {m['platform']} ({m['cpu_count']} CPUs, devices {', '.join(m['devices'])}), "
        f"jax {m['jax']}, {m['date']}, in {results['seconds']} s."
    )
    labelled = data["labelled_captions"]
    classes = results["config"]["images"]["classes"]
    parts = [
        header,
        section("Zero-shot accuracy", "Test images, argmax of cosine similarity to the class "
                f"prompts (templates averaged), among the {len(classes)} classes "
                f"({', '.join(classes)}). 95% CI: Wilson score interval over the test images; "
                "chance: one over the number of classes.",
                table(["family", "image accuracy", "95% CI", "test images", "chance"],
                      [[f, d["accuracy"], f"[{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]", d["num_test"],
                        d["chance"]] for f, d in results["zero_shot_detail"]["vision"].items()])),
        table1_section(results["identification"], model["name"], towers=("text", "vision")),
        section("Labelled captions per split", "A caption counts for a family when it names "
                "exactly one of the family's words.",
                table(["family", "train", "validation", "test"],
                      [[f, c["train"], c["validation"], c["test"]] for f, c in labelled.items()])),
        alignment_section(results["alignment"]),
        steering_section(results["steering"]),
        causal_section(results["causal"], pairs=PAIRS),
        section("Direction bundles", "Each value's eq 6 direction at the family's best site, with "
                "provenance (`reading.bundles.load_bundle`):",
                "\n".join(f"- `{p}`" for p in results["bundles"])),
    ]
    return "\n\n".join(parts) + "\n"


def alignment_section(align: dict) -> str:
    """Table 2's Text-Image row (CMC, eq 8) with every map kind, mean ± std over the map seeds."""
    row = align["Text-Image"]
    kinds = [k for k in align["map_kinds"] if k in row]
    cells = [fmt(row["baseline"])] + [f"{np.mean(row[k]):.3f} ± {np.std(row[k]):.3f}" for k in kinds]
    return section(
        "Table 2: cross-modal consistency (CMC, eq 8)",
        f"Test images paired with a caption naming their class ({align['num_test']} pairs; maps "
        f"fitted on {align['num_train']}, seeds {align['seeds']}). f: the zero-shot distribution "
        "over the class prompts; sim = 1 - JSD (bits). Baseline: the model as it is. Map rows: a "
        "text -> image map (eq 4 for `mrepe`, trained with InfoNCE, eq 3) in the caption's path "
        f"to the zero-shot head. p (MRepE vs Baseline, paired permutation test): {row['p_value']:.4f}.",
        table(["pair", "Baseline", *kinds], [["Text-Image", *cells]]),
    )


def steering_section(steer: dict) -> str:
    """Table 3's None, AP and Direct (eq 5) rows per tower and family."""
    first = next(iter(steer["vision"].values()))
    alphas = [str(a) for a in first["alphas"]]
    rows = [[tower, family, r["num_inputs"], r["none"], r["ap"], *[r["direct"][a] for a in alphas]]
            for tower, fams in steer.items() for family, r in fams.items()]
    return section(
        "Table 3: intervention success rates",
        "Each value of a family is a target; held-out inputs of the tower are steered toward it at "
        f"the last layer's `resid_post` (`{first['site']}` for images), and success is the share "
        "of inputs of other values whose zero-shot prediction among the family's prompts becomes "
        "the target, averaged over targets. None: no intervention. AP: the token the readout pools "
        "(CLS for images, EOS for captions) replaced at that site by the target's mean activation "
        "of that token on the train split. Direct (eq 5): the eq 6 direction added on every token, alpha in "
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
    ident = results["identification"]
    rows = [[tower, float(np.mean(list(ident["baseline"][tower].values()))),
             float(np.mean(list(ident["mrepe"][tower].values()))),
             float(np.mean(list(ident["direction_auroc"][tower].values())))]
            for tower in ("vision", "text")]
    zero_shot = ", ".join(f"{f} {a:.3f}" for f, a in results["zero_shot"]["vision"].items())
    return "\n".join([f"{results['model']['name']}: zero-shot image accuracy {zero_shot}",
                      table(["tower", "Table 1 Baseline", "Table 1 MRepE", "direction AUROC"], rows),
                      f"report: {os.path.join(os.fspath(workdir), 'report.md')}"])
