"""report.md sections for the captioner (its accuracy and examples; its rows in Tables 3-4) and
the transferability table across architectures."""

from __future__ import annotations

from mrepe_jax.experiments.toyworld.transfer import PAIRS
from mrepe_jax.metrics.stats import mean_std
from mrepe_jax.report.markdown import section, table

CAPTIONER = "ToyWorld captioner, Q-Former (captions)"
MODEL_NAMES = {"clip": "CLIP", "clip_b": "CLIP-B", "captioner": "Captioner"}
METHODS = (("native", "native (ceiling)"), ("linear", "linear map"), ("procrustes", "Procrustes"),
           ("mrepe", "eq 4 map"), ("no map", "no map"), ("random", "random (floor)"))


def _ordered(pairs: dict) -> list:
    """The table's pairs in the study's order (results.json stores them sorted by name)."""
    order = [f"{s}->{t}" for s, t in PAIRS]
    return sorted(pairs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def _ms(values, pct: bool = False) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def captioner_section(cap: dict) -> str:
    t = cap["training"]
    # A captioner restored from its checkpoint ran no step this time: no loss to report.
    loss = ("restored from its checkpoint" if t.get("final_loss") is None
            else f"final loss {t['final_loss']:.3f}")
    acc = cap["caption_accuracy"]
    examples = [[e["caption"], e["truth"]] for e in cap["examples"]]
    return section(
        "The ToyWorld captioner: held-out caption accuracy",
        "A BLIP-2-shaped generative model (`train/captioner.py`): query tokens, a Q-Former "
        "cross-attending to the frozen CLIP vision tower's last hidden state, a language "
        f"projection and a small OPT, trained {t['steps']} steps with `train/loop.fit` "
        f"({loss}; {cap['trained_in_seconds']} s this run, which "
        "includes rendering its pool). Greedy captions of "
        f"{cap['eval_images']} held-out test images; a family counts as correct when the caption "
        "names its true value (any synonym) and no other value of that family (target >= 0.9).",
        table(["family"] + list(acc), [["accuracy"] + [f"{v:.3f}" for v in acc.values()]]),
        "Examples (generated / reference):",
        table(["generated caption", "reference caption"], examples),
    )


def table3_row(cap: dict, columns, alpha: str) -> list[str]:
    """The captioner's Table 3 row: eq 5 only (the other methods are not run on it)."""
    steer = cap["steering"]
    return [CAPTIONER] + [
        f"{_ms(steer[m]['success'][alpha], True)} ({_ms(steer[m]['collateral'][alpha], True)})"
        if m in steer else "not run" for m, _ in columns]


def table3_note(cap: dict) -> str:
    return (f" Captioner row: eq 5 at `{cap['site']}` (every query token), each concept value's "
            "eq 6 direction from the train split's mean query states; success = the caption "
            "now names the target and no other value of its family; collateral = the other "
            f"families' caption accuracy. Same {cap['num_inputs']} test images and seeds.")


def table4_rows(cap: dict) -> list[list[str]]:
    s = cap["safety"]
    rows = []
    for key, name in (("scr", "Safety Compliance Rate"), ("harmful", "Harmful output rate")):
        m = s[key]
        change = (f"{100 * (sum(m['mrepe']) / len(m['mrepe']) - m['baseline']) / m['baseline']:+.1f}%"
                  if m["baseline"] else "-")
        rows.append([name, f"{m['baseline']:.3f}", _ms(m["mrepe"]), change, f"{m['p_value']:.4f}"])
    red = [x for x in s["harmful_reduction"] if x is not None]
    rows.append(["Harmful Output Reduction", "-", _ms(red) if red else "undefined", "", ""])
    rows.append(["Value Alignment Score, Adversarial Robustness", "not measured", "", "", ""])
    return rows


def table4_note(cap: dict) -> str:
    return (f"{CAPTIONER}: eq 5 at `{cap['site']}` toward safe emblems, alpha "
            f"{cap['safety']['alpha']} x the site's mean norm. Harmful: the caption names an unsafe "
            "emblem (any synonym, even beside a safe one). SCR: on unsafe-emblem images, the "
            "caption names a safe emblem and no unsafe one. VAS scores zero-shot predictions of "
            "every family and PGD needs a differentiable output (greedy decoding is not), so "
            "neither is measured on captions:")


def architectures_section(arch: dict) -> str:
    alphas = [str(a) for a in arch["alphas"]]
    models = arch["models"]
    b = models["clip_b"]
    rows = []
    for pair, scores in _ordered(arch["pairs"]):
        src, tgt = pair.split("->")
        for method, name in METHODS:
            if method not in scores:
                continue
            r = scores[method]
            rows.append([f"{MODEL_NAMES[src]} → {MODEL_NAMES[tgt]}", name, _ms(r["auroc"])]
                        + [_ms(r["success"][a], True) for a in alphas])
    zs = ", ".join(f"{f} {v:.3f}" for f, v in b["zero_shot_vision"].items())
    verdicts = _eq4_vs_procrustes(arch["pairs"], alphas[0])
    return section(
        "Transfer across architectures",
        "A concept value's eq 6 direction found in one model, carried into another through a map "
        "fitted on paired reads of the same train images (`experiments/toyworld/transfer.py`), "
        "then used there to read (held-out AUROC of the projection, one value vs the rest) and to "
        "steer (eq 5 at the target's site; success % = among test images of other values, the "
        "share the target model now says is the value: a CLIP's image zero-shot prediction, the "
        "captioner's caption). Models: CLIP = the tri-modal ToyWorld CLIP "
        f"({models['clip']['hidden_size']} wide, {models['clip']['num_layers']} layer(s)); CLIP-B = "
        f"a second CLIP trained on the same world, {b['hidden_size']} wide, {b['num_layers']} "
        f"layer(s), {b['steps']} steps (image zero-shot accuracy: {zs}); Captioner = the ToyWorld "
        "captioner's mean query state. Sites: "
        + ", ".join(f"{MODEL_NAMES[m]} `{s}`" for m, s in arch["sites"].items())
        + f". Maps: linear and eq 4 trained with InfoNCE (eq 3), orthogonal Procrustes in closed "
        f"form; mean ± std over {len(arch['seeds'])} seeds of the maps (and of the random "
        f"direction); {arch['num_steer']} steered test images per direction. 'no map' uses the "
        "source direction as it is and exists only where the widths agree; it is no ceiling: the "
        "two spaces share no basis.",
        table(["source → target", "direction", "AUROC"] + [f"success % at alpha {a}" for a in alphas],
              rows),
        *([verdicts] if verdicts else []),
    )


def _eq4_vs_procrustes(pairs: dict, alpha: str) -> str:
    """Per pair, whether the eq 4 map carries steering better than closed-form Procrustes at the
    smallest alpha (where neither saturates): a tie when the means are within both seed stds."""
    parts = []
    for pair, scores in _ordered(pairs):
        if not {"mrepe", "procrustes"} <= set(scores):
            continue
        (m4, s4), (mp, sp) = (mean_std(scores[k]["success"][alpha]) for k in ("mrepe", "procrustes"))
        word = "ties with" if abs(m4 - mp) <= s4 + sp else "beats" if m4 > mp else "trails"
        src, tgt = (MODEL_NAMES[m] for m in pair.split("->"))
        parts.append(f"{src} → {tgt}: {word} ({100 * m4:.1f} vs {100 * mp:.1f} %)")
    return (f"At alpha {alpha}, the eq 4 map against Procrustes: " + "; ".join(parts) + "."
            if parts else "")
