"""report.md's section for the decomposition stage (``experiments/toyworld/decomposition.py``):
the terms' check, TextSpan's head labels, the mean-ablation table and the spurious-head repair."""

from __future__ import annotations

import numpy as np

from mrepe_jax.report.markdown import fmt, section, table


def decomposition_section(r: dict, world: str) -> str:
    heads = [[f"{h['layer']}.{h['head']}", h["family"],
              ", ".join(f"{t} ({100 * e:.0f} %)" for t, e in zip(h["texts"], h["explained"])), h["norm"]]
             for h in r["heads"]]
    families = list(r["ablation"]["none"])
    ablation = [[name] + [acc[f] for f in families] for name, acc in r["ablation"].items()]
    s = r["spurious"]
    parts = [
        "The vision tower's projected embedding of each test image split into its embedding, MLP and "
        "per-(layer, head, token) attention terms (`reading.decompose`, TextSpan's decomposition: the "
        "final LayerNorm linearised per image, the out-projection bias spread over heads and tokens); "
        f"the terms sum back to the embedding within {r['sum_error']:.1e} (largest |embedding| "
        f"{fmt(r['embedding_scale'])}). Each head's outputs get TextSpan's greedy text basis over "
        "ToyWorld's class prompts (`reading.textspan`); a head's label is the family of its first "
        "text, in brackets the share of the head's variance each text explains; norm: the head "
        "term's mean norm.",
        table(["head", "label", "texts", "norm"], heads),
        "Mean-ablation: a head's `attn.z`, a layer's attention output or MLP output replaced by its "
        "train-split mean (per token); the zero-shot accuracy per family that each ablation keeps "
        "(test split; `none`: the model as it is).",
        table(["ablation"] + families, ablation),
    ]
    if s["worst_group_after"] is None:
        parts.append(f"No head's label is {s['source']}: the {s['source']}-head ablation has nothing to ablate.")
    else:
        rand_w, rand_m = np.asarray(s["random_worst_group"]), np.asarray(s["random_mean_group"])
        moved = s["worst_group_after"] - s["worst_group_before"]
        verdict = ("improves" if moved > 0 and s["worst_group_after"] > rand_w.mean() + rand_w.std()
                   else "does not improve")
        parts += [
            f"Repair of the {s['target']} <- {s['source']} shortcut (spurious {s['world_spurious']} in the "
            f"train split): the {len(s['heads'])} heads labelled {s['source']} "
            f"({', '.join(f'{a}.{b}' for a, b in s['heads'])}) mean-ablated together, against "
            f"{len(rand_w)} random sets of as many heads. Groups: {s['target']} x {s['source']} on the "
            f"test split, where the families are independent. Ablating the {s['source']} heads "
            f"{verdict} the worst group beyond the random control.",
            table(["", f"worst-group {s['target']} accuracy", f"mean-group {s['target']} accuracy"],
                  [["before", s["worst_group_before"], s["mean_group_before"]],
                   [f"{s['source']} heads ablated", s["worst_group_after"], s["mean_group_after"]],
                   ["random heads ablated (mean ± std)", f"{rand_w.mean():.3f} ± {rand_w.std():.3f}",
                    f"{rand_m.mean():.3f} ± {rand_m.std():.3f}"]]),
        ]
    seg = r.get("segmentation")
    if seg:
        ours = seg["decomposition (TextSpan)"]["miou"]
        rivals = {k: v["miou"] for k, v in seg.items() if k != "decomposition (TextSpan)"}
        beaten = [k for k, v in rivals.items() if v >= ours]
        verdict = ("The decomposition's map beats every baseline on mIoU." if not beaten else
                   f"The decomposition's map does not beat {', '.join(beaten)} on mIoU.")
        parts += ["Zero-shot segmentation of each test image's object (ToyWorld renders its true mask): "
                  "each patch's score for the image's shape prompt, binarised at the image's mean and "
                  "upsampled to pixels. Decomposition: the patch's attention terms summed over layers and "
                  "heads (TextSpan's map); last-layer tokens: each patch token read out as if it were CLS, "
                  "cosine to the prompt; attention rollout of CLS. " + verdict,
                  table(["map", "pixel accuracy", "mIoU"],
                        [[k, v["pixel_accuracy"], v["miou"]] for k, v in seg.items()])]
    return section(f"Where the image embedding comes from — {world} world", *parts)
