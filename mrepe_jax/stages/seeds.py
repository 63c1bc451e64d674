"""Seeds every experiment shares: the run seed's offset, and each seed's train subset.

Rule: run seed ``k`` shifts every seed of a config by ``STRIDE * k``. Seed 0 therefore runs the
config's seeds as written, and two run seeds never share a seed in any role as long as a config's
own seeds stay below ``STRIDE``: a map seeded 1 in run seed 0 is not the map seeded 1 of run seed 1
(a plain ``+ k`` would reuse it). Each experiment lists its roles (``experiments/*/seeds``).
"""

from __future__ import annotations

import numpy as np

#: Run seed ``k`` adds ``STRIDE * k`` to every seed of the config.
STRIDE = 1000


def offset(run_seed: int) -> int:
    """``STRIDE * run_seed``: what run seed ``run_seed`` adds to every seed."""
    seed = int(run_seed)
    if seed < 0:
        raise ValueError(f"config.seed must be >= 0 (numpy and ToyWorld seeds are non-negative), "
                         f"got {seed}")
    return STRIDE * seed


def train_subsets(n: int, fraction: float, seeds, field: str = "train_fraction") -> list[np.ndarray]:
    """Per seed, the sorted rows of an ``n``-row train split that what is fitted with that seed
    sees (its data split): ``int(n * fraction)`` rows without replacement. ``field`` names the
    config field in the error."""
    if not 0 < fraction <= 1:
        raise ValueError(f"{field} must be in (0, 1], got {fraction}")
    size = int(n * fraction)
    return [np.sort(np.random.default_rng([s, 0x5B]).choice(n, size, replace=False)) for s in seeds]
