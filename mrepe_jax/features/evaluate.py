"""How good a sparse autoencoder is, from activations streamed batch by batch (issue 26, item 3):

- ``l0``: the mean number of active latents per row;
- ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  (1 - R^2, as SAELens and Gao et al. report it);
- ``dead_fraction``: latents that never fire on the rows; ``dense_fraction``: latents that fire on
  more than ``dense_above`` of them (10 %, the usual cut for "dense" latents);
- ``frequency [d_sae]``: each latent's firing rate (SAELens saves ``log10`` of it as
  ``sparsity.safetensors``).

Every sum is float64 and accumulated per batch, so memory does not grow with the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

DENSE_ABOVE = 0.1


@dataclasses.dataclass
class SAEMetrics:
    rows: int
    l0: float
    fvu: float
    dead_fraction: float
    dense_fraction: float
    frequency: np.ndarray

    def summary(self) -> dict:
        return {"rows": self.rows, "l0": self.l0, "fvu": self.fvu, "dead_fraction": self.dead_fraction,
                "dense_fraction": self.dense_fraction}


def evaluate_sae(sae, batches: Iterable[np.ndarray], dense_above: float = DENSE_ABOVE) -> SAEMetrics:
    """The metrics above of ``sae`` (a ``features.train.TrainedSAE``, or anything with ``encode`` /
    ``decode`` and ``cfg.d_sae``) over ``batches`` of raw activations ``[B, d_in]``."""
    n, active, fired = 0, 0.0, None
    sse, sum_x, sum_sq = 0.0, None, 0.0
    for x in batches:
        x = np.asarray(x, np.float64)
        z = np.asarray(sae.encode(x.astype(np.float32)), np.float64)
        x_hat = np.asarray(sae.decode(z.astype(np.float32)), np.float64)
        on = z > 0
        fired = on.sum(0) if fired is None else fired + on.sum(0)
        active += on.sum()
        sse += float(((x - x_hat) ** 2).sum())
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_sq += float((x ** 2).sum())
        n += len(x)
    if n == 0:
        raise ValueError("evaluate_sae got no rows")
    total = sum_sq - float((sum_x ** 2).sum()) / n  # sum ||x - mean||^2
    frequency = fired / n
    return SAEMetrics(n, active / n, sse / max(total, 1e-30), float(np.mean(fired == 0)),
                      float(np.mean(frequency > dense_above)), frequency)
