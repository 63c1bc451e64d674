"""report.md sections for the steering and safety stages: Table 3 (success and collateral damage)
and Table 4 (SCR, VAS, adversarial robustness, harmful outputs)."""

from __future__ import annotations

from mrepe_jax.experiments.toyworld.report import generative
from mrepe_jax.metrics.stats import mean_std
from mrepe_jax.report.markdown import section, table

COLUMNS = (("none", "Baseline (none)"), ("ap", "AP"), ("direct", "Direct"),
           ("attention", "Attention"), ("combined", "Combined"), ("ft", "FT"))
TOWER_NAMES = {"vision": "ToyWorld CLIP, image", "text": "ToyWorld CLIP, text", "audio": "ToyWorld CLIP, audio"}


def retrained_note(stage: dict) -> str:
    """What a table's seeds mean when the CLIP itself was retrained per seed (`:paper`)."""
    if not stage.get("clip_retrained"):
        return ""
    return (" Each seed also retrains the CLIP (the `:paper` protocol, "
            "`experiments/toyworld/paper_protocol.py`): a Baseline is the mean over the retrained CLIPs, and each "
            "p is the largest over them (significant on every model).")


def _pct(values) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def _sae_cell(features: dict | None, tower: str, alpha: str) -> str:
    """The SAE feature column: the vision tower's, from the features stage."""
    if features is None or tower != "vision" or alpha not in features["steering"]["add"]["success"]:
        return "-"
    add = features["steering"]["add"]
    return f"{_pct(add['success'][alpha])} ({_pct(add['collateral'][alpha])})"


def table3(control: dict, world: str, captioner: dict | None = None, features: dict | None = None) -> str:
    """Table 3; ``captioner``: the captioner stage's results, for its row (main world only);
    ``features``: the SAE stage's, for its column."""
    towers = control["towers"]
    parts = []
    sae = [] if features is None else ["SAE feature"]
    for alpha in (str(a) for a in control["table_alphas"]):
        rows = [[TOWER_NAMES.get(t, t)] + [f"{_pct(r[m]['success'][alpha])} ({_pct(r[m]['collateral'][alpha])})"
                                           for m, _ in COLUMNS]
                + ([_sae_cell(features, t, alpha)] if sae else [])
                for t, r in towers.items()]
        if captioner is not None:
            rows.append(generative.table3_row(captioner, COLUMNS, alpha) + ["-"] * len(sae))
        parts += [f"alpha = {alpha} x the site's mean norm:",
                  table(["Model"] + [name for _, name in COLUMNS] + sae, rows)]
    members = ", ".join(f"{t} {100 * r['member_fraction']:.1f} %" for t, r in towers.items())
    return section(
        f"Table 3: intervention success rates — {world} world",
        "Success (%): every concept value is a steering target in turn; among held-out test inputs "
        f"of other values ({control.get('num_inputs', '')} per target), the share whose zero-shot "
        "prediction of that family becomes the target, averaged over the targets. In brackets: "
        "collateral, the accuracy on the other families under the same intervention (the "
        "unsteered model's is the Baseline column's). Interventions at each tower's last layer "
        "(`resid_post` for eq 5 and AP, its `attn.logits` for eq 7); see "
        "`experiments/toyworld/control.py`. Mean ± std over "
        f"{len(control['seeds'])} seeds of the directions, prototypes and means (train subsets); "
        "the CLIP is one trained model. AP patches the target's mean activation of the readout "
        "token (CLS for images and audio, EOS for text) into that token (no alignment). FT: a "
        "residual linear head on `pooled` tuned per target (and seed) with "
        "Adam through `train/loop.fit`, toward the target while keeping the other families' "
        "labels, so it sees more labels than the directions do. AP and FT have no alpha: the "
        "same figures in every alpha's table. CAI and RLHF do not apply to "
        "contrastive encoders (they tune a generative policy), so they have no column. Eq 7 "
        f"boosts the key tokens that eq 1 marks as members of the target ({members} of them): "
        "inputs of other values hold few such tokens, so attention alone moves little."
        + (generative.table3_note(captioner) if captioner is not None else "")
        + (" SAE feature: the vision tower's SAE feature for the target (the one with the best "
           "validation AUROC) steers by adding its decoder row as eq 5's Delta, scaled as Direct; one "
           "SAE, so no spread over seeds (see the SAE section)." if features is not None else "")
        + retrained_note(control),
        *parts,
    )


METRICS = (("scr", "Safety Compliance Rate"), ("vas", "Value Alignment Score"),
           ("ar", "Adversarial Robustness"), ("harmful", "Harmful output rate"))


def _change(base: float, steered) -> str:
    m = sum(steered) / len(steered)
    return f"{100 * (m - base) / base:+.1f}%" if base else "-"


def table4(safety: dict, world: str, captioner: dict | None = None) -> str:
    """Table 4; ``captioner``: the captioner stage's results, for its rows (main world only)."""
    parts = []
    for tower, r in safety["towers"].items():
        rows = []
        for key, name in METRICS:
            if key not in r:
                rows.append([name, "not applicable (discrete tokens)", "", "", ""])
                continue
            m = r[key]
            rows.append([name, f"{m['baseline']:.3f}", _ms(m["mrepe"]), _change(m["baseline"], m["mrepe"]),
                         f"{m['p_value']:.4f}"])
        red = [x for x in r["harmful_reduction"] if x is not None]
        rows.append(["Harmful Output Reduction", "-", _ms(red) if red else "undefined", "", ""])
        o = r["overall"]
        rows.append(["Overall Safety Score", f"{o['baseline']:.3f}", _ms(o["mrepe"]),
                     _change(o["baseline"], o["mrepe"]), f"{o['p_value']:.4f}"])
        parts += [f"{TOWER_NAMES.get(tower, tower)}:",
                  table(["Metric", "Baseline", "MRepE", "Improvement", "p"], rows)]
    if captioner is not None:
        parts += [generative.table4_note(captioner),
                  table(["Metric", "Baseline", "MRepE", "Improvement", "p"],
                        generative.table4_rows(captioner))]
    return section(
        f"Table 4: safety and alignment metrics — {world} world",
        "MRepE: the combined intervention (eq 5 at alpha "
        f"{safety['alpha']} x the site's mean norm + eq 7) at each tower's last layer toward safe "
        "emblems (eq 6: safe vs unsafe train samples). SCR (eq 10): unsafe-emblem test inputs "
        "predicted as a safe emblem. VAS (eq 9): mean over ToyWorld's values (harmless, faithful, "
        "constructive) of each value's mean score on its own inputs. Adversarial robustness "
        "(eq 11): the emblem prediction unchanged under L-inf PGD against the model scored. "
        f"Harmful: test inputs predicted as an unsafe emblem; its reduction is relative to the "
        f"Baseline. {safety['num_inputs']} test inputs; MRepE mean ± std over "
        f"{len(safety['seeds'])} seeds of the fitted direction and prototype; the Baseline has "
        "nothing fitted. p: paired permutation test over the inputs (MRepE averaged over seeds). "
        "Overall: the mean of SCR, VAS and adversarial robustness (SCR and VAS for text), as the "
        "paper's Overall row is; its p flips each input's share of that score, so it tests the "
        "score as weighted."
        + retrained_note(safety),
        *parts,
    )


def _ms(values) -> str:
    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"
