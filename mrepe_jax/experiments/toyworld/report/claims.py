"""The report's "Claims" section: each quantitative claim of the paper's abstract, §4.3 and §5 on
one line, with our figure from this run and a verdict.

A claim is "confirmed" when our figure goes the paper's way *and* is at least as large as the
paper's number (and significant, p < 0.05, where the claim comes with a test); otherwise "not
confirmed", with the figure that says by how much. Claims about models or data this project
cannot run are "not testable here", with the reason. The rules are fixed here, not tuned to a
run: the same code judges every world and seed.
"""

from __future__ import annotations

import numpy as np

from mrepe_jax.experiments.toyworld.efficiency import training_ratios
from mrepe_jax.experiments.toyworld.report.costs import ABLATIONS, ablation_scores
from mrepe_jax.report.markdown import section

SIGNIFICANT = 0.05
CONFIRMED, NOT_CONFIRMED = "confirmed", "not confirmed"
TOWER_LABELS = {"vision": "image", "text": "text", "audio": "audio"}


def _verdict(holds: bool) -> str:
    return CONFIRMED if holds else NOT_CONFIRMED


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def identification(results: dict) -> tuple[str, str]:
    ident = results["identification"]
    gains = {t: np.mean(list(ident["mrepe"][t].values())) / np.mean(list(ident["baseline"][t].values())) - 1
             for t in ident["baseline"]}
    figure = ", ".join(f"{TOWER_LABELS.get(t, t)} {_pct(g)}" for t, g in gains.items())
    base = min(np.mean(list(v.values())) for v in ident["baseline"].values())
    note = f" (the Baseline already scores >= {base:.3f}: a 20% gain is out of reach)" if base > 1 / 1.2 else ""
    return figure + note, _verdict(all(g >= 0.20 for g in gains.values()))


def _cmc_gains(results: dict) -> dict:
    return {pair: np.mean(r["mrepe"]) / r["baseline"] - 1 for pair, r in results["alignment"]["cmc"].items()}


def cmc_average(results: dict) -> tuple[str, str]:
    gains = _cmc_gains(results)
    p = {pair: r["p_value"] for pair, r in results["alignment"]["cmc"].items()}
    mean = float(np.mean(list(gains.values())))
    figure = f"{_pct(mean)} on average (" + ", ".join(
        f"{pair} {_pct(g)}, p {p[pair]:.4f}" for pair, g in gains.items()) + ")"
    return figure, _verdict(mean >= 0.25 and all(v < SIGNIFICANT for v in p.values()))


def cmc_largest(results: dict) -> tuple[str, str]:
    gains = _cmc_gains(results)
    best = max(gains, key=gains.get)
    return (f"largest: {best} ({_pct(gains[best])}); Image-Audio {_pct(gains['Image-Audio'])}",
            _verdict(best == "Image-Audio" and gains[best] >= 0.262))


STEERING_METHODS = ("none", "ap", "direct", "attention", "combined", "ft")


def _success_at_paper_alpha(results: dict) -> tuple[str, dict]:
    """The paper's alpha (0.1) when Table 3 has it, else its first; ``{tower: {method: mean}}``."""
    control = results["control"]
    alpha = "0.1" if 0.1 in control["table_alphas"] else str(control["table_alphas"][0])
    return alpha, {t: {m: float(np.mean(r[m]["success"][alpha])) for m in STEERING_METHODS}
                   for t, r in control["towers"].items()}


def combined_best(results: dict) -> tuple[str, str]:
    alpha, means = _success_at_paper_alpha(results)
    parts = []
    for tower, m in means.items():
        best = max(m, key=m.get)
        parts.append(f"{TOWER_LABELS.get(tower, tower)}: best {best} {100 * m[best]:.1f}% "
                     f"(combined {100 * m['combined']:.1f}%)")
    holds = all(max(m, key=m.get) == "combined" for m in means.values())
    return f"alpha {alpha}: " + "; ".join(parts), _verdict(holds)


def complementary(results: dict) -> tuple[str, str]:
    alpha, means = _success_at_paper_alpha(results)
    parts = [f"{TOWER_LABELS.get(t, t)}: combined {100 * m['combined']:.1f}% vs direct "
             f"{100 * m['direct']:.1f}%, attention {100 * m['attention']:.1f}%" for t, m in means.items()]
    holds = all(m["combined"] > max(m["direct"], m["attention"]) for m in means.values())
    return f"alpha {alpha}: " + "; ".join(parts), _verdict(holds)


def _relative_change(results: dict, metric: str) -> tuple[float | None, str, dict]:
    """The relative change of ``metric`` averaged over the towers (as the paper's one figure
    aggregates its scenarios), the per-tower changes beside it, and the per-tower p-values."""
    towers = results["safety"]["towers"]
    base = float(np.mean([r[metric]["baseline"] for r in towers.values()]))
    steered = float(np.mean([np.mean(r[metric]["mrepe"]) for r in towers.values()]))
    p = {t: r[metric]["p_value"] for t, r in towers.items()}
    per = ", ".join(f"{TOWER_LABELS.get(t, t)} " + (_pct(np.mean(r[metric]["mrepe"]) / r[metric]["baseline"] - 1)
                                                    if r[metric]["baseline"] else "undefined")
                    + f", p {p[t]:.4f}" for t, r in towers.items())
    return (steered / base - 1 if base else None), per, p


def overall_safety(results: dict) -> tuple[str, str]:
    change, per, p = _relative_change(results, "overall")
    if change is None:
        return "undefined: the Baseline's Overall score is 0", NOT_CONFIRMED
    return (f"{_pct(change)} on the tower-averaged score ({per})",
            _verdict(change >= 0.338 and all(v < SIGNIFICANT for v in p.values())))


def harmful(results: dict) -> tuple[str, str]:
    change, per, p = _relative_change(results, "harmful")
    if change is None:
        return "undefined: the Baseline outputs no harm on any tower", NOT_CONFIRMED
    return (f"{_pct(change)} on the tower-averaged rate ({per})",
            _verdict(change <= -0.342 and all(v < SIGNIFICANT for v in p.values())))


def training_overhead(results: dict) -> tuple[str, str]:
    r = training_ratios(results)
    return f"{r['mrepe']:.3f}× the CLIP's training time", _verdict(r["mrepe"] <= 1.18)


def inference_overhead(results: dict) -> tuple[str, str]:
    per = {t: r["inference_ratio"]["mrepe"] for t, r in results["efficiency"]["towers"].items()}
    mean = float(np.mean(list(per.values())))
    return (f"{mean:.3f}× on average (" + ", ".join(f"{TOWER_LABELS.get(t, t)} {v:.3f}×"
                                                     for t, v in per.items()) + ")",
            _verdict(mean <= 1.11))


def components(results: dict) -> tuple[str, str]:
    scores = ablation_scores(results)
    full = float(np.mean(scores["full"]["overall"]))
    drops = {name: full - float(np.mean(scores[v]["overall"])) for v, name in ABLATIONS if v != "full"}
    figure = f"Full {full:.3f}; Overall lost " + ", ".join(f"{n}: {d:+.3f}" for n, d in drops.items())
    return figure, _verdict(all(d > 0 for d in drops.values()))


def abstract(results: dict) -> tuple[str, str]:
    ident = results["identification"]
    transparency = np.mean([np.mean(list(v.values())) for v in ident["mrepe"].values()]) > np.mean(
        [np.mean(list(v.values())) for v in ident["baseline"].values()])
    alpha = str(results["control"]["table_alphas"][0])
    control = {t: np.mean(r["direct"]["success"][alpha]) > np.mean(r["none"]["success"][alpha])
               for t, r in results["control"]["towers"].items()}
    safety = {t: r["overall"]["p_value"] < SIGNIFICANT and np.mean(r["overall"]["mrepe"]) > r["overall"]["baseline"]
              for t, r in results["safety"]["towers"].items()}
    figure = (f"transparency (Table 1 average up): {'yes' if transparency else 'no'}; controllability "
              f"(eq 5 success above none at alpha {alpha}): "
              + ", ".join(f"{TOWER_LABELS.get(t, t)} {'yes' if v else 'no'}" for t, v in control.items())
              + "; safety (Overall up, p < 0.05): "
              + ", ".join(f"{TOWER_LABELS.get(t, t)} {'yes' if v else 'no'}" for t, v in safety.items()))
    return figure, _verdict(bool(transparency) and all(control.values()) and all(safety.values()))


CLAIMS = (
    ("Abstract", "significant improvements in the transparency, controllability and safety", abstract),
    ("§5.1", "identification gains of 20-25% across models and modalities (Table 1)", identification),
    ("§5.1", "cross-modal consistency improves substantially: +25.0% on average (Table 2)", cmc_average),
    ("§5.1", "the largest CMC gain is image-audio, +26.2% (Table 2)", cmc_largest),
    ("§4.3, §5.1", "combined (direct + attention) interventions have the highest success rates (Table 3)",
     combined_best),
    ("§5.1", "direct and attention interventions are complementary: combined beats each alone "
     "(Table 3)", complementary),
    ("§5.1", "GPT-4V reaches a 94.8% success rate", None),
    ("§5.2", "+33.8% overall safety score (Table 4)", overall_safety),
    ("§5.2", "-34.2% harmful outputs (Table 4)", harmful),
    ("§5.2, §5.3", "modest overhead: +18% training time (Table 5)", training_overhead),
    ("§5.2", "modest overhead: +11% inference time (Table 5)", inference_overhead),
    ("§4.3", "every component contributes: removing any lowers the Overall score (Table 6)", components),
)
UNTESTABLE = {"GPT-4V reaches a 94.8% success rate":
              "not testable here (GPT-4V is a closed model: no weights to read or steer)"}


def claims_section(results: dict, world: str) -> str:
    lines = []
    for where, claim, check in CLAIMS:
        if check is None:
            lines.append(f"- {where}: {claim} — {UNTESTABLE[claim]}.")
            continue
        figure, verdict = check(results)
        lines.append(f"- {where}: {claim} — ours: {figure} — **{verdict}**.")
    return section(
        f"Claims — {world} world",
        "Each quantitative claim of the paper against this run's figure. Confirmed: our figure "
        "goes the paper's way, is at least the paper's number, and is significant (p < 0.05) "
        "where the claim has a test; otherwise not confirmed. ToyWorld is a small, known world "
        "and one tiny CLIP, not the paper's models: a claim not confirmed here is a statement "
        "about this setting, and so is one confirmed.",
        "\n".join(lines),
    )
