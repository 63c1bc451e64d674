"""report.md of the BLIP-2 experiment (``experiments/blip2/pipeline.py``): the model, its weights'
hash and the data at the top, Table 1 per part, Table 3 for captions, eq 2 patching, and a summary
table at the end."""

from __future__ import annotations

import os

import numpy as np

from mrepe_jax.experiments.blip2.checkpoint import PARTS
from mrepe_jax.report.markdown import fmt, section, table
from mrepe_jax.report.stage_tables import causal_section

SITE_NAMES = {"qformer": "Q-Former output", "lm": "OPT layer"}


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return fmt(values[0]) if len(values) == 1 else f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def render(results: dict) -> str:
    m, model, data = results["machine"], results["model"], results["data"]
    layers = ", ".join(f"{PARTS[t]} {n}" for t, n in model["layers"].items())
    header = (
        f"# mrepe_jax — {model['name']}\n\n"
        f"Model `{model['name']}` ({model['dtype']}; layers: {layers}; {model['num_query_tokens']} query "
        f"tokens), weights sha256 `{model['weights_sha256']}`.\n\n"
        f"Data: {data['source']}; images read: "
        + ", ".join(f"{s} {n}" for s, n in data["images"].items()) + ".\n\n"
        f"Run on {m['platform']} ({m['cpu_count']} CPUs, devices {', '.join(m['devices'])}), "
        f"jax {m['jax']}, {m['date']}, in {results['seconds']} s."
    )
    parts = [
        header,
        section("Labelled images per split", "An image has a value of a family when its captions name "
                "that word and no other value of the family (whole words, any case).",
                table(["family", "train", "validation", "test"],
                      [[f, c["train"], c["validation"], c["test"]] for f, c in data["labelled"].items()])),
        table1_section(results["identification"], model["name"]),
        steering_section(results["steering"]),
        causal_section({t: results["causal"][t] for t in ("qformer", "lm")}, pairs=pairs_text(results["causal"]),
                       metric="the logit of the clean value's word minus that of the corrupt value's word "
                       "at the caption's first generated token (the last prompt position)"),
        section("Direction bundles", "Each value's eq 6 direction at each part's best site, with provenance "
                "(`reading.bundles.load_bundle`):", "\n".join(f"- `{p}`" for p in results["bundles"])),
        summary_section(results),
    ]
    return "\n\n".join(parts) + "\n"


def table1_section(ident: dict, model: str) -> str:
    families = list(ident)
    rows = [[f"{model} (Baseline)", "-", _mean_std([ident[f]["baseline"] for f in families])],
            [f"{model} + MRepE", "-", _mean_std([ident[f]["mrepe"] for f in families])]]
    detail = []
    for f in families:
        for part, row in ident[f]["parts"].items():
            detail.append([f, part, row["mrepe"], f"`{row['mrepe_site']}`", row["direction_auroc"],
                           f"`{row['direction_site']}`"])
    return section(
        "Table 1: representation identification",
        "Image concepts: held-out one-vs-rest AUROC of eq 1's prototype similarity (macro over a "
        "family's values, mean ± std over families). Baseline: at the Q-Former's output (its last "
        "layer, mean over the query tokens: the image representation BLIP-2 hands OPT). MRepE: at the "
        "site best on validation among every layer of the three parts. Reads: the EVA residual "
        "stream averaged over its tokens, the Q-Former's query states averaged over the query "
        "tokens, OPT's residual stream at the last prompt token (BOS: the position that emits the "
        "caption's first token). Text column: not measured here (the concepts are caption words, so "
        "a caption's own tokens would carry them trivially).",
        table(["Model", "Text", "Image"], rows),
        "Per part, at its best site on validation (prototype AUROC eq 1; direction AUROC eq 6, the "
        "projection on value vs rest):",
        table(["family", "part", "prototype AUROC", "site", "direction AUROC", "site"], detail),
    )


def steering_section(steer: dict) -> str:
    blocks, examples = [], []
    for key, r in steer["sites"].items():
        alphas = [str(a) for a in r["alphas"]]
        rows = []
        for f, cells in r["families"].items():
            rows.append([f, "success", cells["none"]["success"], cells["ap"]["success"],
                         *[cells["direct"][a]["success"] for a in alphas]])
            rows.append([f, "kept", "-", cells["ap"]["kept"], *[cells["direct"][a]["kept"] for a in alphas]])
        blocks.append(f"{SITE_NAMES[key]} `{r['site']}` (scale {r['scale']:.3g}):")
        blocks.append(table(["family", "score", "None", "AP", *[f"Direct a={a}" for a in alphas]], rows))
        examples += [[SITE_NAMES[key], e["target"], e["unsteered"], e["ap"], f"a={e['alpha']}: {e['direct']}"]
                     for e in r["examples"]]
    return section(
        "Table 3: steering what BLIP-2 says (captions)",
        f"{steer['num_inputs']} held-out images, each value of each family a target in turn; only images "
        "whose captions do not name the target count for it. Success: the share of greedy captions that "
        "name the target word, averaged over targets. Kept: the share of the unsteered caption's content "
        "words (not stop words, not the family's values) that the steered caption keeps (1: nothing else "
        "changed). None: no intervention. AP: the site's activation replaced by the target's train-set mean "
        "(every query token at the Q-Former output; the last prompt token at the OPT layer, at the prompt "
        "pass: the caption's later words still read the image tokens, which it leaves as they are). "
        "Direct (eq 5): the site's eq 6 direction added at every token (and at every decoding step "
        "for OPT), alpha in units of the site's mean norm.",
        *blocks,
        "Examples (the first input of the first targets):",
        table(["site", "target", "unsteered", "AP", "Direct"], examples),
    )


def pairs_text(causal: dict) -> str:
    words = "; ".join(f"{f}: {', '.join(t)}" for f, t in causal["word_tokens"].items())
    return (f"Pairs: two held-out images labelled with different values of the family. Prompt: "
            f"{causal['prompt']!r} after the image tokens. Each word's logit is its first token's "
            f"({words}). Towers: `qformer` (positions: query tokens) and `lm` (image tokens, then the prompt).")


def _best_direct(cells: dict) -> float | None:
    """The best success over Direct's alphas (None when no alpha had inputs)."""
    return max((c["success"] for c in cells["direct"].values() if c["success"] is not None), default=None)


def _avg(values) -> str:
    values = [v for v in values if v is not None]
    return fmt(float(np.mean(values))) if values else "-"


def summary_rows(results: dict) -> list[list]:
    ident = results["identification"]
    families = list(ident)
    rows = [["Table 1 Baseline (image AUROC)", _mean_std([ident[f]["baseline"] for f in families])],
            ["Table 1 MRepE (image AUROC)", _mean_std([ident[f]["mrepe"] for f in families])]]
    for part in PARTS.values():
        rows.append([f"Table 1 {part} best direction AUROC",
                     _mean_std([ident[f]["parts"][part]["direction_auroc"] for f in families])])
    for key, r in results["steering"]["sites"].items():
        fams = r["families"].values()
        rows.append([f"Table 3 {SITE_NAMES[key]} success: None / AP / best Direct",
                     f"{_avg(c['none']['success'] for c in fams)} / {_avg(c['ap']['success'] for c in fams)} / "
                     f"{_avg(_best_direct(c) for c in fams)}"])
    rhos = [r["spearman_exact_vs_attribution"] for t in ("qformer", "lm") for r in results["causal"][t].values()]
    rows.append(["Eq 2 Spearman(exact, attribution), mean", float(np.mean(rhos))])
    return rows


def summary_section(results: dict) -> str:
    return section("Summary", table(["figure", "value"], summary_rows(results)))


def summary(results: dict, workdir) -> str:
    """What ``launch.run`` prints at the end."""
    return "\n".join([f"{results['model']['name']}:", table(["figure", "value"], summary_rows(results)),
                      f"report: {os.path.join(os.fspath(workdir), 'report.md')}"])
