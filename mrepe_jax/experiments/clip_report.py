"""report.md of the CLIP experiment (``experiments/clip.py``): ToyWorld's report shape, with the
model, its weights' hash and the data named at the top."""

from __future__ import annotations

import os

import numpy as np

from mrepe_jax.report.markdown import section, table
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
    zero_shot = results["zero_shot"]["vision"]
    labelled = data["labelled_captions"]
    parts = [
        header,
        section("Zero-shot accuracy", "Test images, argmax of cosine similarity to the class "
                "prompts (templates averaged).",
                table(["family", "image accuracy"], [[f, a] for f, a in zero_shot.items()])),
        table1_section(results["identification"], model["name"], towers=("text", "vision")),
        section("Labelled captions per split", "A caption counts for a family when it names "
                "exactly one of the family's words.",
                table(["family", "train", "validation", "test"],
                      [[f, c["train"], c["validation"], c["test"]] for f, c in labelled.items()])),
        causal_section(results["causal"], pairs=PAIRS),
        section("Direction bundles", "Each value's eq 6 direction at the family's best site, with "
                "provenance (`reading.bundles.load_bundle`):",
                "\n".join(f"- `{p}`" for p in results["bundles"])),
    ]
    return "\n\n".join(parts) + "\n"


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
