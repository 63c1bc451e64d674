"""The `:paper` protocol's seeds: the CLIP itself is retrained per seed, and every stage's figures
are pooled over the retrained models.

Seed ``s`` trains the CLIP with ``train.seed = s`` (initialisation and batch order; the world is
the same) and fits everything on top of it with seed ``s`` as well (``align.seeds`` and
``control.seeds`` become ``(s,)``), so that the spread over seeds covers both sources of variation.
``merge`` then pools the per-seed stage results into the shape of a one-model run:

- per-seed lists (``[value per seed]``) are concatenated, so a table's mean ± std runs over all of
  them; lists that are settings, not figures (``SETTING_LISTS``, or lists of strings), are kept once;
- a scalar figure (a Baseline, an accuracy, a time) is averaged over the models; one equal on
  every model (a count, a size) is kept as it is;
- a p-value is the largest over the models: "significant on every retrained model", a
  conservative combination (intersection-union), since averaging p-values is not a test;
- ``causal`` (the patching sweeps and their heatmaps), ``captioner`` and ``architectures`` (a
  captioner and a second CLIP trained on the first CLIP) and ``gallery`` (the concept pages'
  examples) are the first seed's: per-model studies, not figures to average; so is what names one
  model's own parts (an SAE feature's index and page: the AUROCs beside it pool every seed's own
  best feature).
"""

from __future__ import annotations

import numbers

import ml_collections
import numpy as np

SETTING_LISTS = frozenset({"alphas", "table_alphas", "steer_alphas", "metrics", "spurious_pair"})
#: Per-model studies and settings, and what names one model's own parts (an SAE feature's index,
#: its page): the first seed's, never averaged (seed 2's feature 7 is not seed 1's).
FIRST_ONLY = frozenset({"causal", "captioner", "architectures", "gallery", "machine", "map_config", "world",
                        "feature", "probe_features", "feature_pages"})


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """``config`` with the CLIP and everything fitted on it seeded by ``seed``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.seed = int(seed)
    c.align.seeds = (int(seed),)
    c.control.seeds = (int(seed),)
    return c


def merge(per_seed: list, key: str = "") -> object:
    """Pools the per-seed results (see the module docstring); every element has one structure."""
    first = per_seed[0]
    if len(per_seed) == 1 or key in FIRST_ONLY:
        return first
    if isinstance(first, dict):
        missing = [k for k in first if k not in FIRST_ONLY and any(k not in r for r in per_seed)]
        if missing:
            raise ValueError(f"cannot pool seeds: {missing} missing from some seed's results"
                             + (f" under {key!r}" if key else ""))
        return {k: first[k] if k in FIRST_ONLY else merge([r[k] for r in per_seed], k) for k in first}
    if isinstance(first, list):
        if key in SETTING_LISTS or all(isinstance(x, str) for x in first):
            return first
        return [x for r in per_seed for x in r]
    if key == "p_value":
        return float(max(per_seed))
    if isinstance(first, numbers.Number) and not isinstance(first, bool):
        if all(v == first for v in per_seed):  # a setting (a count, a size): kept as it is
            return first
        return float(np.mean([v for v in per_seed if v is not None]))
    return first
