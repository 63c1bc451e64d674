"""report.md's section for the sparse-autoencoder stage (``experiments/toyworld/features.py``):
each architecture at (about) matched L0 against the world's ground truth, the eq 6 directions
beside them, the hard world's shortcut check and the steering rows."""

from __future__ import annotations

from mrepe_jax.report.markdown import fmt, section, table


def _spurious(arch: str, s: dict | None) -> list[list]:
    if s is None:
        return []
    return [[arch, name, ", ".join(r["sources"]), r["test_auroc_target"], r["test_auroc_source"],
             "yes" if r["test_auroc_source"] > r["test_auroc_target"] else "no"]
            for name, r in s["per_value"].items()]


def features_section(f: dict, world: str) -> str:
    """The section for one world's ``results["features"]``."""
    archs = f["architectures"]
    rows = [[a, r["l0"], r["fvu"], r["dead_fraction"], r["dense_fraction"], r["alive"], r["spliced_mean_accuracy"],
             r["recovery"], r["probe_recovery"], r["mean_best_auroc"], r["purity"], r["train_seconds"]]
            for a, r in archs.items()]
    d = f["directions"]
    rows.append(["eq 6 directions (mean difference)", "-", "-", "-", "-", "-", "-", d["recovery"], "-",
                 d["mean_auroc"], "-", "-"])
    best = max(archs, key=lambda a: archs[a]["recovery"])
    ahead = d["recovery"] > archs[best]["recovery"]
    verdict = (f"Best recovery: {best} ({archs[best]['recovery']:.3f}) against the eq 6 directions' "
               f"{d['recovery']:.3f}: " + ("the directions recover more concept values than any SAE feature."
                                          if ahead else "the SAE features recover as many or more."))
    parts = [
        f"SAEs of {f['latents']} latents at `{f['site']}` (Table 3's steering site), trained {f['steps']} steps "
        "each on token activations streamed from the CLIP (`features.stream`, nothing stored); "
        f"TopK and BatchTopK at k = {f['k']}, JumpReLU and ReLU at the config's sparsity "
        "coefficients (`features.coefficients`), so the comparison is at about matched L0 (the L0 "
        "column says how matched). An image's feature activation is its tokens' mean. L0 (active "
        "latents per token), FVU (variance unexplained), dead (never fire on test tokens) and dense "
        "(fire on > 10 % of them): on the test split's tokens. Spliced: the image zero-shot accuracy "
        "(mean over families) with the SAE's reconstruction in place of the site on every token (its "
        f"error term dropped; the model as it is: {f['baseline_mean_accuracy']:.3f}). "
        "Recovery: the share of concept values "
        "whose best feature (chosen on validation) reaches test AUROC >= 0.95; probe: a sparse "
        "logistic probe on the best few features (`features.probe_k`); purity: the share of alive "
        "features whose top test images are >= 90 % one value of one family. "
        "`experiments/toyworld/features.py`. " + verdict,
        table(["architecture", "L0", "FVU", "dead", "dense", "alive", "spliced", "recovery", "probe recovery",
               "mean best AUROC", "purity", "train s"], rows),
    ]
    spurious = [row for a, r in archs.items() for row in _spurious(a, r.get("spurious"))]
    if spurious:
        s = next(r["spurious"] for r in archs.values() if r.get("spurious"))
        parts += [f"The {s['target']} <- {s['source']} shortcut (train split only): per {s['target']} value, the "
                  "feature that best detects it on the train split, and its test AUROC for that value and "
                  f"for the {s['source']} values that predicted it in training. A feature that learnt the "
                  f"shortcut detects the {s['source']} better on test (last column).",
                  table(["architecture", s["target"], f"train {s['source']}", f"test AUROC {s['target']}",
                         f"test AUROC {s['source']}", "shortcut"], spurious)]
    st = f["steering"]
    alphas = list(st["add"]["success"])
    parts += [f"Steering with the {st['architecture']} SAE's recovered features (vision tower; Table 3's "
              "inputs and scoring): each value's feature's decoder row added at the site (eq 5 with it as "
              "Delta, alpha x the site's mean norm: the SAE feature column of Table 3), and the latent "
              f"clamped on every token to {fmt(st['clamp']['clamp_scale'])} x its largest train activation, "
              "the SAE's error term kept. Success (collateral).",
              table(["intervention", "success", "collateral"],
                    [[f"add decoder row, alpha = {a}", st["add"]["success"][a][0], st["add"]["collateral"][a][0]]
                     for a in alphas]
                    + [["clamp latent", st["clamp"]["success"], st["clamp"]["collateral"]]])]
    return section(f"Sparse-autoencoder features — {world} world", *parts)
