"""The decomposition page of ``report.html`` (``#heads``): the vision tower's attention heads as
TextSpan labels them (``results["decomposition"]``, ``experiments/toyworld/decomposition.py``),
as a layer x head grid (the label in each cell, its texts and their variance shares on hover) and a
sortable table, then what mean-ablating each head, attention layer and MLP does to zero-shot
accuracy, the spurious-head repair and the segmentation scores; the hard world's the same way.
A dual encoder's decomposition (``stages/dual_encoder/decomposition.py``: texts, no family, no
ablations) gets the grid and the table, each head labelled by its first text."""

from __future__ import annotations

import re
from collections.abc import Mapping

from mrepe_jax.report.html.charts import heatmap_svg
from mrepe_jax.report.html.pages import esc, fmt, table
from mrepe_jax.report.plots import PALETTE

PAGE_ID = "heads"


def worlds(results: Mapping) -> list[tuple[str, Mapping]]:
    """``[(world name, decomposition results)]``: the main world's (ToyWorld's name for it, from
    the config's difficulty knobs), then the hard world's."""
    out = []
    world = (results.get("config") or {}).get("world")
    knobs = ("spurious", "caption_noise", "distractors")
    main = "main" if not isinstance(world, Mapping) else "hard" if any(world.get(k) for k in knobs) else "default"
    if isinstance(results.get("decomposition"), Mapping) and results["decomposition"].get("heads"):
        out.append((main, results["decomposition"]))
    hard = results.get("hard")
    if isinstance(hard, Mapping) and isinstance(hard.get("decomposition"), Mapping) \
            and hard["decomposition"].get("heads"):
        out.append(("hard", hard["decomposition"]))
    return out


def title(name: str) -> str:
    """A ``worlds`` name as the page says it."""
    return "this model" if name == "main" else f"{name} world"


def _texts(h: Mapping) -> str:
    return ", ".join(f"{t} ({100 * e:.0f} %)" for t, e in zip(h["texts"], h["explained"]))


def label(h: Mapping) -> str:
    """A head's label: its family (ToyWorld), else its first text."""
    return str(h.get("family") or (h["texts"][0] if h.get("texts") else "-"))


def _ablation_order(name: str) -> tuple:
    """none, the heads by (layer, head), attention and MLP by layer, then the head sets."""
    m = re.fullmatch(r"head (\d+)\.(\d+)", name)
    if name == "none":
        return (0,)
    if m:
        return (1, int(m[1]), int(m[2]))
    m = re.fullmatch(r"(attention|mlp) (\d+)", name)
    if m:
        return (2 if m[1] == "attention" else 3, int(m[2]))
    m = re.fullmatch(r"random (\d+)", name)
    return (5, int(m[1])) if m else (4, name)


def head_grid(heads: list, colours: Mapping[str, str]) -> str:
    """An HTML table, a row per layer and a column per head: each cell the head's label (its first
    text's family) in that family's colour; hover: its texts with their variance shares."""
    layers = sorted({int(h["layer"]) for h in heads})
    num = max(int(h["head"]) for h in heads) + 1
    at = {(int(h["layer"]), int(h["head"])): h for h in heads}
    rows = []
    for layer in layers:
        cells = [f'<th scope="row">layer {layer}</th>']
        for k in range(num):
            h = at.get((layer, k))
            if h is None:
                cells.append("<td></td>")
                continue
            tip = f"head {layer}.{k}: {label(h)} — {_texts(h)}; norm {h['norm']:.3g}"
            cells.append(f'<td class="head-cell" style="border-left:6px solid {colours.get(label(h), "#999")}" '
                         f'data-tip="{esc(tip)}" title="{esc(tip)}">{esc(label(h))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th></th>" + "".join(f"<th>head {k}</th>" for k in range(num)) + "</tr>"
    return (f'<div class="table-wrap"><table class="head-grid"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _head_rows(d: Mapping) -> list[list[str]]:
    ablation = d.get("ablation", {})
    none = ablation.get("none", {})
    rows = []
    for h in d["heads"]:
        acc = ablation.get(f"head {h['layer']}.{h['head']}")
        drop = (sum(acc[f] - none[f] for f in none) / len(none)) if acc and none else None
        rows.append([f"{h['layer']}.{h['head']}", str(h["layer"]), str(h["head"]), esc(label(h)),
                     esc(h["texts"][0] if h["texts"] else "-"), fmt(h["explained"][0] if h["explained"] else None),
                     esc(_texts(h)), fmt(h["norm"]), fmt(drop)])
    return rows


def ablation_heatmap(d: Mapping, chart_id: str) -> str:
    """Each ablation's zero-shot accuracy minus the intact model's, per family (a heatmap)."""
    ablation = d.get("ablation", {})
    none = ablation.get("none")
    if not none:
        return ""
    families = list(none)
    names = sorted((n for n in ablation if n != "none"), key=_ablation_order)
    data = {"kind": "heatmap", "values": [[ablation[n][f] - none[f] for f in families] for n in names],
            "yticks": names, "xticks": families, "xlabel": "family", "ylabel": "mean-ablated",
            "title": "zero-shot accuracy change under mean-ablation", "center": True}
    return (f'<figure>{heatmap_svg(data, chart_id)}<figcaption>Zero-shot accuracy (test split) with each '
            "part replaced by its train-split mean, minus the intact model's, per family (blue: lost; hover a "
            "cell for its value).</figcaption></figure>")


def _spurious(s: Mapping) -> str:
    if s.get("worst_group_after") is None:
        return (f"<p>No head's label is {esc(s.get('source'))}: the {esc(s.get('source'))}-head "
                "ablation has nothing to ablate.</p>")
    rand_w, rand_m = s.get("random_worst_group") or [], s.get("random_mean_group") or []
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    heads = ", ".join(f"{a}.{b}" for a, b in s["heads"])
    return (f"<p>The {esc(s['source'])} heads ({esc(heads)}) mean-ablated together, against "
            f"{len(rand_w)} random sets of as many heads; groups: {esc(s['target'])} x {esc(s['source'])} "
            f"on the test split (spurious {esc(s.get('world_spurious'))} in training).</p>" + table(
                ["", f"worst-group {s['target']} accuracy", f"mean-group {s['target']} accuracy"],
                [["before", fmt(s["worst_group_before"]), fmt(s["mean_group_before"])],
                 [f"{esc(s['source'])} heads ablated", fmt(s["worst_group_after"]), fmt(s["mean_group_after"])],
                 ["random heads ablated (mean)", fmt(mean(rand_w)), fmt(mean(rand_m))]]))


def _world(name: str, d: Mapping) -> str:
    families = [h["family"] for h in d["heads"] if h.get("family")]
    families += list(d.get("ablation", {}).get("none", {}))
    # Colours name families; a dual encoder's labels are free texts, left uncoloured.
    colours = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(dict.fromkeys(families))}
    key = " ".join(f'<span class="head-key" style="border-left:6px solid {c}">{esc(f)}</span>'
                   for f, c in colours.items())
    basis = ("a head's label is the family of its first text" if colours else "a head's label is its first text")
    parts = [f'<h2 id="{PAGE_ID}-{name}">{esc(title(name))}</h2>',
             "<p>Each head's outputs (its terms of the image embedding, summed over tokens) get TextSpan's "
             f"greedy text basis over the text pool; {basis}. Hover a cell for its texts and the share of the "
             "head's variance each explains (terms sum back to the embedding within "
             f"{d.get('sum_error', float('nan')):.1e}).</p>",
             f"<p>{key}</p>" if key else "", head_grid(d["heads"], colours),
             table(["head", "layer", "index", "label", "first text", "its share", "texts (variance share)", "norm",
                    "accuracy change when ablated"], _head_rows(d))]
    if d.get("ablation"):
        parts += ["<h3>Mean-ablation</h3>", ablation_heatmap(d, f"{PAGE_ID}-{name}-ablation")]
    if d.get("spurious"):
        parts += ["<h3>Spurious-head repair</h3>", _spurious(d["spurious"])]
    seg = d.get("segmentation")
    if seg:
        parts += ["<h3>Zero-shot segmentation</h3>", table(
            ["map", "pixel accuracy", "mIoU"], [[esc(k), fmt(v["pixel_accuracy"]), fmt(v["miou"])]
                                               for k, v in seg.items()])]
    return "".join(parts)


def heads_page(results: Mapping) -> str:
    """The ``#heads`` page, or "" when results.json has no head labels."""
    found = worlds(results)
    if not found:
        return ""
    return "".join([f'<section class="page" id="{PAGE_ID}">',
                    '<p><a href="#top">&larr; back to the report</a></p>',
                    "<h1>Attention heads: TextSpan labels and mean-ablation</h1>",
                    "<p>" + " · ".join(f'<a href="#{PAGE_ID}-{n}">{esc(title(n))}</a>' for n, _ in found) + "</p>",
                    *(_world(n, d) for n, d in found), "</section>"])
