"""Table 3 for captions: steering what BLIP-2 says toward a concept word, scored on its greedy captions.

Per steering site (the Q-Former's output, and one OPT layer), per concept family and target value
``c``, on held-out images whose captions do not name ``c``:

- **None**: the unsteered caption;
- **AP** (activation patching): the site's activation replaced by value ``c``'s mean over the
  train images. At the Q-Former output that is every query token's mean state ``[Nq, D]``; at the
  OPT layer, the last prompt token's mean state, written at the prompt pass (the caption's later
  tokens read it through the KV cache);
- **Direct** (eq 5): ``r + alpha * scale * Delta_c`` at every token (every query token; every
  prompt and generated token for OPT, at every decoding step), ``Delta_c`` the site's eq 6
  direction (value ``c`` vs the family's other values, unit norm) and ``scale`` the site's mean
  norm over the train images, so ``alpha`` is relative (as every other Table 3 here).

Scores, per target, averaged over targets:

- **success**: the share of captions that name the target word (a whole word, any case);
- **kept**: the share of the unsteered caption's content words (not a stop word, not a value of
  the steered family) that the steered caption still contains: 1 means the rest of the caption is
  untouched, 0 that steering rewrote it. It is the captioning analogue of the towers' collateral
  accuracy, measured without labels the captions do not have. A caption with no content word is
  left out of the mean.

Each method is one compiled program over all its interventions (``control.captions.steered_captions``):
the unsteered captions are Direct's zero step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from mrepe_jax.control.captions import AddAt, steered_captions
from mrepe_jax.experiments.blip2.checkpoint import Checkpoint, words

STOP_WORDS = frozenset(
    "a an the of on in with and is are to at by for from near next its it this that there some two "
    "three four up down out into over under top front side while who his her their has have being".split())


def names(caption: str, word: str) -> bool:
    """Whether ``caption`` names ``word`` (a whole word or phrase, any case)."""
    return re.search(rf"\b{re.escape(word)}\b", caption, re.IGNORECASE) is not None


def kept(unsteered: str, steered: str, exclude: Sequence[str]) -> float | None:
    """The share of ``unsteered``'s content words (module docstring) that ``steered`` contains;
    None when it has none."""
    content = set(words(unsteered)) - STOP_WORDS - {w.lower() for w in exclude}
    if not content:
        return None
    return len(content & set(words(steered))) / len(content)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _cell(captions: Sequence[str], base: Sequence[str], rows: np.ndarray, word: str, values) -> dict:
    """Success and kept over the inputs ``rows`` (None where there is nothing to average)."""
    return {"success": _mean([float(names(captions[i], word)) for i in rows]),
            "kept": _mean([kept(base[i], captions[i], values) for i in rows])}


def _mean_cells(cells: Sequence[dict]) -> dict:
    return {k: _mean([c[k] for c in cells]) for k in ("success", "kept")}


def steer(ckpt: Checkpoint, embeds: np.ndarray, labels: Mapping[str, np.ndarray],
          families: Mapping[str, Sequence[str]], site: str, directions: Mapping[str, np.ndarray],
          ap_values: Mapping[str, np.ndarray], ap_fn, scale: float, alphas: Sequence[float],
          max_new_tokens: int, chunk: int, num_examples: int = 3) -> dict:
    """Table 3's rows at one ``site`` (module docstring). ``directions[f]`` ``[K, D]`` unit;
    ``ap_values[f]`` ``[K, ...]`` what AP writes for each value through ``ap_fn`` (a static edits
    function of ``{"value": ...}``); ``embeds``: the images' EVA output."""
    model = ckpt.stages()
    index = [(f, c) for f, values in families.items() for c in range(len(values))]
    d = directions[index[0][0]].shape[-1]
    deltas = [np.zeros(d, np.float32)] + [directions[f][c] for f, c in index for _ in alphas]
    steps = [0.0] + [a * scale for _ in index for a in alphas]
    direct = steered_captions(model, ckpt.params, embeds, AddAt(site),
                              {"delta": np.stack(deltas).astype(np.float32), "alpha": np.asarray(steps, np.float32)},
                              max_new_tokens, chunk)
    ap = steered_captions(model, ckpt.params, embeds, ap_fn,
                          {"value": np.stack([ap_values[f][c] for f, c in index]).astype(np.float32)},
                          max_new_tokens, chunk)
    text = {"direct": [ckpt.captions(x) for x in direct], "ap": [ckpt.captions(x) for x in ap]}
    base = text["direct"][0]
    out: dict = {"site": site, "scale": scale, "alphas": [float(a) for a in alphas], "families": {}}
    examples = []
    for f, values in families.items():
        per_target = {}
        for c, word in enumerate(values):
            k = index.index((f, c))
            rows = np.flatnonzero(np.asarray(labels[f]) != c)
            direct_k = {str(a): _cell(text["direct"][1 + k * len(alphas) + j], base, rows, word, values)
                        for j, a in enumerate(alphas)}
            per_target[word] = {"none": _cell(base, base, rows, word, values),
                                "ap": _cell(text["ap"][k], base, rows, word, values), "direct": direct_k,
                                "inputs": len(rows)}
            if len(examples) < num_examples and len(rows):
                i = int(rows[0])
                examples.append({"family": f, "target": word, "unsteered": base[i],
                                 "ap": text["ap"][k][i],
                                 "direct": text["direct"][1 + k * len(alphas) + len(alphas) - 1][i],
                                 "alpha": float(alphas[-1])})
        targets = list(per_target.values())
        out["families"][f] = {
            "none": _mean_cells([t["none"] for t in targets]), "ap": _mean_cells([t["ap"] for t in targets]),
            "direct": {str(a): _mean_cells([t["direct"][str(a)] for t in targets]) for a in alphas},
            "per_target": per_target}
    out["examples"] = examples
    return out
