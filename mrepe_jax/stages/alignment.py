"""The alignment stage's score (paper §3.2.2, Table 2) for any pair of towers: cross-modal
consistency (eq 8) of paired inputs, as the model is (*Baseline*) and with a map phi_{i->j}
(eq 4, trained with InfoNCE, eq 3) in modality i's path to the zero-shot head (*MRepE*, and any
other map kind fitted beside it).

``f`` is the zero-shot output distribution over each family's values (softmax at the model's
``logit_scale``), ``sim = 1 - JSD`` in bits, averaged over families and test pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.metrics.cmc import cmc, zero_shot_distribution
from mrepe_jax.metrics.stats import paired_permutation_test


@jax.jit
def _sims(emb_i, emb_j, prompts: tuple, scale):
    return jnp.mean(jnp.stack([cmc(zero_shot_distribution(emb_i, p, scale),
                                   zero_shot_distribution(emb_j, p, scale))[1] for p in prompts]), 0)


def per_pair_sims(emb_i, emb_j, prompts: Mapping[str, np.ndarray], scale: float) -> np.ndarray:
    """Per test pair, eq 8's ``sim`` averaged over the families: ``[N]``."""
    return np.asarray(_sims(jnp.asarray(emb_i), jnp.asarray(emb_j), tuple(prompts.values()), scale))


def cmc_row(r_i: np.ndarray, r_j: np.ndarray, maps: Mapping[str, Sequence], prompts: Mapping,
            scale: float, key, main: str = "mrepe") -> dict:
    """Table 2's row of one pair of towers from test pairs ``r_i`` / ``r_j`` [N, D] read at the
    towers' output embeddings: Baseline CMC, each map kind's CMC per seed (``maps``: ``{kind: [map
    per seed]}``, each ``r_i -> j``'s space), and the permutation p-value of ``main`` (per-pair
    sims averaged over seeds) against Baseline on the same pairs."""
    base = per_pair_sims(r_i, r_j, prompts, scale)
    row = {"baseline": float(base.mean())}
    per_kind = {kind: [per_pair_sims(np.asarray(m(r_i)), r_j, prompts, scale) for m in ms]
                for kind, ms in maps.items()}
    row.update({kind: [float(s.mean()) for s in sims] for kind, sims in per_kind.items()})
    row["p_value"] = paired_permutation_test(np.mean(per_kind[main], 0), base, key)
    return row
