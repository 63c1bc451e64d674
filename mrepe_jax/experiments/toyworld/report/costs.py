"""report.md sections for what MRepE costs and what each part of it brings: Table 5 (efficiency
ratios) and Table 6 (ablation)."""

from __future__ import annotations

import numpy as np

from mrepe_jax.experiments.toyworld.efficiency import training_ratios
from mrepe_jax.experiments.toyworld.report.control import TOWER_NAMES
from mrepe_jax.metrics.stats import mean_std
from mrepe_jax.report.markdown import section, table

METHOD_NAMES = {"mrepe": "ToyWorld CLIP + MRepE (eq 5 + 7)", "ap": "ToyWorld CLIP + AP",
                "ft": "ToyWorld CLIP + FT head"}


def _x(value: float) -> str:
    return f"{value:.2f}×"


def table5(results: dict, world: str) -> str:
    eff = results["efficiency"]["towers"]
    train = training_ratios(results)
    towers = list(eff)
    rows, detail = [], []
    for m, name in METHOD_NAMES.items():
        inference = [eff[t]["inference_ratio"][m] for t in towers]
        memory = [eff[t]["memory_ratio"][m] for t in towers]
        rows.append([name, _x(train[m]) if m in train else "—", _x(np.mean(inference)),
                     _x(np.mean(memory))])
        detail += [[name, TOWER_NAMES.get(t, t), f"{1e3 * eff[t]['seconds'][m]:.2f} / "
                    f"{1e3 * eff[t]['seconds']['none']:.2f}", _x(eff[t]["inference_ratio"][m]),
                    f"{eff[t]['peak_bytes'][m] / 2**20:.2f} / {eff[t]['peak_bytes']['none'] / 2**20:.2f}",
                    _x(eff[t]["memory_ratio"][m])] for t in towers]
    restored = (" The maps were restored from a previous run's checkpoints, so their fit time "
                "here is a load, not a fit." if train["maps_restored"] else "")
    return section(
        f"Table 5: computational efficiency — {world} world",
        "Ratios to the ToyWorld CLIP alone, measured in this run (see "
        "`experiments/toyworld/efficiency.py`). Training time: (CLIP training "
        f"{train['clip_seconds']:.1f} s + the method's fitting) / CLIP training; MRepE fits the "
        "eq 4 maps of every modality pair (one seed's share of the stacked fit) and the eq 6 "
        "directions and eq 1 prototypes of every target in every tower "
        f"({train['mrepe_seconds']:.2f} s), FT its heads for every target in every tower "
        f"({train['ft_seconds']:.2f} s); AP's class means are not timed apart (they are computed "
        "beside the directions). Inference time: median of interleaved timed forwards of "
        f"{results['efficiency']['num_inputs']} test inputs, with the method's edit as an argument "
        "of the compiled program, over the same forward without. Memory: peak bytes of the "
        "compiled program (XLA's buffer assignment), with over without; averaged over the towers "
        "in the first table."
        + (f" Inference and memory were measured on the {results['efficiency']['measured_on']}: "
           "the same programs on other data." if "measured_on" in results["efficiency"] else "")
        + restored + " AP writes a constant into the readout token of the last "
        "layer's residual stream; which token that is (CLS / EOS) is an argument of the program, so "
        "the encoder below still runs.",
        table(["Model", "Training Time", "Inference Time", "Memory Usage"], rows),
        "Per tower (milliseconds per forward and MiB, method / none):",
        table(["Model", "Tower", "ms", "Inference", "MiB", "Memory"], detail),
    )


ABLATIONS = (("full", "Full MRepE"), ("no_alignment", "w/o Cross-Modal Alignment"),
             ("no_direct", "w/o Direct Intervention"), ("no_attention", "w/o Attention Intervention"),
             ("no_identification", "w/o Representation ID"))


def ablation_scores(results: dict) -> dict:
    """``{variant: {"cmc"|"vas"|"scr"|"overall": [per seed]}}``: VAS and SCR of each Table 4
    variant averaged over the towers, CMC over the modality pairs (with the MRepE maps, or the
    unmapped embeddings without alignment), Overall the mean of the three (the paper's Table 6:
    0.89 = mean of 0.85, 0.92, 0.89)."""
    towers = results["safety"]["towers"].values()
    cmc = results["alignment"]["cmc"].values()
    seeds = len(results["safety"]["seeds"])
    mapped = np.mean([r["mrepe"] for r in cmc], 0)  # per map seed
    # Seeds pair up by index when the stages ran as many; otherwise every seed gets the mean.
    mapped = mapped if len(mapped) == seeds else np.full(seeds, mapped.mean())
    unmapped = np.full(seeds, np.mean([r["baseline"] for r in cmc]))
    out = {}
    for variant, _ in ABLATIONS:
        # The steering does not use the maps: without alignment only CMC changes.
        steering = "full" if variant == "no_alignment" else variant
        s = {m: np.mean([t["ablation"][steering][m] for t in towers], 0) for m in ("vas", "scr")}
        s["cmc"] = unmapped if variant == "no_alignment" else mapped
        s["overall"] = (s["cmc"] + s["vas"] + s["scr"]) / 3
        out[variant] = {k: [float(x) for x in v] for k, v in s.items()}
    return out


def table6(results: dict, world: str) -> str:
    scores = ablation_scores(results)

    def ms(values):
        m, s = mean_std(values)
        return f"{m:.3f} ± {s:.3f}"

    rows = [[name] + [ms(scores[v][k]) for k in ("cmc", "vas", "scr", "overall")] for v, name in ABLATIONS]
    return section(
        f"Table 6: ablation — {world} world",
        "Each row takes one component out of Table 4's intervention (eq 5 + 7 toward safe "
        "emblems at each tower's last layer). VAS and SCR: averaged over the towers. CMC (eq 8): "
        "Table 2's, averaged over the modality pairs, with the eq 4 maps; without alignment, the "
        "unmapped embeddings (the steering itself does not use the maps, so that row's VAS and "
        "SCR are the full row's). Without identification: a random direction of the eq 6 "
        "direction's norm, and eq 7 boosting as many tokens per input as eq 1 selected, at "
        "random positions; the maps do not depend on identification, so CMC stays. Overall: the "
        f"mean of CMC, VAS and SCR. Mean ± std over {len(results['safety']['seeds'])} seeds.",
        table(["Configuration", "CMC", "VAS", "SCR", "Overall"], rows),
    )
