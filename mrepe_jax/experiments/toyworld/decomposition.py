"""Where the image embedding comes from, on ToyWorld (issue 27; TextSpan: Gandelsman, Efros and
Steinhardt, ICLR 2024).

- The vision tower's projected embedding of each test image is split into embedding, MLP and
  per-(layer, head, token) attention terms (``reading.decompose``); the report states how exactly
  they sum back.
- Each head's outputs (its terms summed over tokens) get TextSpan's greedy text basis
  (``reading.textspan``) over ToyWorld's class prompts (every family's values): a head's label is
  the family of its first text, with the share of the head's variance each text explains.
- Mean-ablation (``Replace`` by the train split's mean at ``attn.z`` for a head, at ``attn_out`` /
  ``mlp_out`` for a whole layer's attention / MLP): the zero-shot accuracy per family each
  ablation keeps, in one compiled call for every ablation (``control.evaluate``).
- The spurious-correlation repair: the heads whose label is the spurious pair's source family
  (colour; in the hard world colour predicts shape in the train split only) are mean-ablated
  together, and the worst-group accuracy of the target family (shape; groups: shape x colour, on
  test, where the correlation is broken) is compared before and after, against ablating the same
  number of random heads (``random_sets`` draws). In the default world, with no shortcut, the same
  ablation is a control.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mrepe_jax.control.evaluate import steered_predictions
from mrepe_jax.edits import Replace, along
from mrepe_jax.reading.decompose import decompose
from mrepe_jax.reading.textspan import text_span
from mrepe_jax.stages import segmentation
from mrepe_jax.stages.reads import token_reps

KEYS = ("image", None)


@dataclasses.dataclass(frozen=True)
class Ablations:
    """``edits_fn``: every layer's heads (``attn.z``), attention output and MLP output replaced by
    their means where one intervention's masks say (an all-False mask is the identity), so any set
    of heads and layers is one slice of the arrays and every set shares one program."""

    layers: int

    def __call__(self, p):
        edits = {}
        for layer in range(self.layers):
            s = f"vision.layers.{layer}"
            edits[f"{s}.attn.z"] = Replace(along(p["z"][layer], "token", "head", "feature"),
                                           along(p["heads"][layer], "head"))
            edits[f"{s}.attn_out"] = Replace(along(p["attn"][layer], "token", "feature"),
                                             along(p["attn_on"][layer], "token"))
            edits[f"{s}.mlp_out"] = Replace(along(p["mlp"][layer], "token", "feature"),
                                            along(p["mlp_on"][layer], "token"))
        return edits


def _means(model, params, pixels, layers: int) -> dict:
    """The train split's mean at each layer's ``attn.z``, ``attn_out`` and ``mlp_out``, per token."""
    out = {"z": [], "attn": [], "mlp": []}
    for layer in range(layers):
        for key, point in (("z", "attn.z"), ("attn", "attn_out"), ("mlp", "mlp_out")):
            site = f"vision.layers.{layer}.{point}"
            out[key].append(token_reps(model, params, "vision", KEYS, {"image": pixels}, site).mean(0))
    return {k: np.stack(v) for k, v in out.items()}


def _groups(preds: np.ndarray, labels: dict, target: str, source: str, min_count: int) -> tuple[float, float]:
    """The lowest and the mean accuracy of ``target`` predictions over the (target, source) value
    groups holding at least ``min_count`` test examples."""
    y, s = np.asarray(labels[target]), np.asarray(labels[source])
    accs = [float(np.mean(preds[(y == a) & (s == b)] == a)) for a in np.unique(y) for b in np.unique(s)
            if np.sum((y == a) & (s == b)) >= min_count]
    return min(accs), float(np.mean(accs))


def _segmentation(model, params, d, test_x, test_labels: dict, masks: np.ndarray, prompts: dict) -> dict:
    """Zero-shot segmentation of each test image's object against its true mask
    (``stages.segmentation``), each patch scored for the image's shape prompt."""
    text = np.asarray(prompts["shape"])[np.asarray(test_labels["shape"])]  # [N, D']
    maps = segmentation.maps(model, params, d, test_x, text, KEYS)
    return {name: segmentation.scores(m, masks) for name, m in maps.items()}


def run(model, params, world, splits: dict, labels: dict, prompts: dict, cfg, masks=None) -> dict:
    """Every part of the module docstring for the vision tower. ``splits``: ``{split: batch}``;
    ``labels``: ``{split: {family: [N]}}``; ``prompts``: ``{family: [V, D]}`` unit-norm class prompts;
    ``masks``: the test images' object masks ``[N, H, W]`` (segmentation is scored only with them)."""
    t0 = time.perf_counter()
    test_x = np.asarray(splits["test"]["image"])
    layers = model.tower_layers()["vision"]
    d = decompose(model, {"params": params}, test_x, "vision")
    heads = np.asarray(d.heads())  # [N, L, H, D']
    num_heads = heads.shape[2]
    sum_error = float(np.abs(np.asarray(d.total()) - np.asarray(d.target)).max())
    names = [(f, v) for f, values in world.families.items() for v in values]
    texts = np.concatenate([np.asarray(prompts[f]) for f in world.families])
    labelled = []
    for layer in range(layers):
        for h in range(num_heads):
            basis = text_span(heads[:, layer, h], texts, cfg.num_texts, min(cfg.rank, texts.shape[1]))
            picked = [int(i) for i in np.asarray(basis.indices)]
            explained = [float(x) for x in np.asarray(basis.explained())]
            labelled.append({"layer": layer, "head": h, "family": names[picked[0]][0],
                             "texts": [f"{names[i][0]}={names[i][1]}" for i in picked],
                             "explained": explained, "norm": float(np.linalg.norm(heads[:, layer, h], axis=-1).mean())})

    source, target = world.config.spurious_pair
    chosen = [(r["layer"], r["head"]) for r in labelled if r["family"] == source]
    rng = np.random.default_rng([cfg.seed, 27])
    every = [(layer, h) for layer in range(layers) for h in range(num_heads)]
    random_sets = [[every[i] for i in rng.choice(len(every), len(chosen), replace=False)]
                   for _ in range(cfg.random_sets)] if chosen else []
    rows: list[tuple[str, dict]] = [("none", {})]
    rows += [(f"head {layer}.{h}", {"heads": [(layer, h)]}) for layer, h in every]
    rows += [(f"attention {layer}", {"attn": [layer]}) for layer in range(layers)]
    rows += [(f"mlp {layer}", {"mlp": [layer]}) for layer in range(layers)]
    if chosen:
        rows.append((f"{source} heads", {"heads": chosen}))
        rows += [(f"random {i}", {"heads": s}) for i, s in enumerate(random_sets)]
    means = _means(model, params, np.asarray(splits["train"]["image"]), layers)
    tokens = means["attn"].shape[1]
    arrays = {"z": [], "attn": [], "mlp": [], "heads": [], "attn_on": [], "mlp_on": []}
    for _, spec in rows:
        mask = np.zeros((layers, num_heads), bool)
        for layer, h in spec.get("heads", []):
            mask[layer, h] = True
        arrays["heads"].append(mask)
        arrays["attn_on"].append(np.stack([np.full(tokens, layer in spec.get("attn", [])) for layer in range(layers)]))
        arrays["mlp_on"].append(np.stack([np.full(tokens, layer in spec.get("mlp", [])) for layer in range(layers)]))
        for key in ("z", "attn", "mlp"):
            arrays[key].append(means[key])
    arrays = {k: np.stack(v) for k, v in arrays.items()}
    preds = steered_predictions(model, {"params": params}, "vision", test_x, None, Ablations(layers), arrays,
                                prompts)
    y = {f: np.asarray(v) for f, v in labels["test"].items()}
    accuracy = {name: {f: float(np.mean(np.asarray(preds[f][k]) == y[f])) for f in world.families}
                for k, (name, _) in enumerate(rows)}
    groups = {name: _groups(np.asarray(preds[target][k]), y, target, source, cfg.min_group)
              for k, (name, _) in enumerate(rows)}
    after = groups.get(f"{source} heads", (None, None))
    randoms = [groups[f"random {i}"] for i in range(len(random_sets))]
    return {
        "sum_error": sum_error, "embedding_scale": float(np.abs(np.asarray(d.target)).max()),
        "heads": labelled, "ablation": accuracy,
        "spurious": {"source": source, "target": target, "heads": [list(x) for x in chosen],
                     "worst_group_before": groups["none"][0], "mean_group_before": groups["none"][1],
                     "worst_group_after": after[0], "mean_group_after": after[1],
                     "random_worst_group": [g[0] for g in randoms], "random_mean_group": [g[1] for g in randoms],
                     "accuracy_after": accuracy.get(f"{source} heads"),
                     "world_spurious": float(world.config.spurious)},
        "segmentation": None if masks is None else _segmentation(model, params, d, test_x, labels["test"],
                                                                  np.asarray(masks), prompts),
        "seconds": round(time.perf_counter() - t0, 1)}
