"""One run seed (``config.seed``) for every random choice of a ToyWorld run.

Rule (``stages.seeds``): run seed ``k`` shifts every seed of the config by ``STRIDE * k``, so seed
0 runs the config's seeds as written (the documented figures were measured with them).

The roles (``effective``, recorded in results.json as ``seeds``):

- ``world``: ``world.seed``, every sample of both worlds (the hard one adds knobs, not a seed);
- ``clip``: ``train.seed``, the CLIP's initialisation and batch order (per retrained CLIP with
  ``paper_protocol``, the `:paper` protocol, whose seeds then also replace ``align`` and ``control``,
  see ``paper_protocol.seed_config``);
- ``align``: ``align.seeds``, each map's train subset, initialisation, anchors and batch order,
  the transfer table's random directions and (the first) Table 2's permutation test;
- ``control``: ``control.seeds``, the train subsets of Tables 3, 4, 6 and the captioner's rows,
  and Table 6's unidentified (random) direction;
- ``captioner``: ``captioner.seed``, its initialisation and batch order;
- ``features``: ``features.seed``, the SAEs' initialisation and their stream of images and tokens;
- ``decomposition``: ``decomposition.seed``, the random head sets of the ablation control;
- ``transfer_clip``: ``transfer.clip.seed``, or the CLIP's seed when that is not set;
- ``causal``: the causal stage's contrast pairs and its bootstrap CI (no config field: the run
  seed's offset itself);
- ``permutation_tests``: the sign flips of Table 4's and the captioner's permutation tests (as
  ``causal``).

Table 5's timing programs fill their edit arrays from a fixed generator: the values change no
figure (the cost of a program does not depend on them), so they follow no seed.
"""

from __future__ import annotations

import ml_collections

from mrepe_jax.stages import seeds as seeds_lib


def offset(config: ml_collections.ConfigDict) -> int:
    """``STRIDE * config.seed``: what run seed ``config.seed`` adds to every seed."""
    return seeds_lib.offset(config.seed)


def effective(config: ml_collections.ConfigDict) -> dict:
    """Every seed a run of ``config`` (as the user wrote it, before ``apply``) uses, by role (see
    the module docstring)."""
    o = offset(config)
    clip_seeds = [int(s) + o for s in config.clip_seeds]
    clip = clip_seeds or int(config.train.seed) + o
    # The `:paper` protocol fits everything on CLIP seed s with seed s (paper_protocol.seed_config).
    align = clip_seeds or [int(s) + o for s in config.align.seeds]
    control = clip_seeds or [int(s) + o for s in config.control.seeds]
    transfer = config.transfer.clip.get("seed")
    return {"run": int(config.seed), "offset": o, "world": int(config.world.seed) + o,
            "clip": clip, "align": align, "control": control,
            "captioner": int(config.captioner.seed) + o,
            "features": int(config.features.seed) + o, "decomposition": int(config.decomposition.seed) + o,
            # The transfer study runs on the first CLIP only (pipeline.STUDIES).
            "transfer_clip": int(transfer) + o if transfer is not None
            else (clip_seeds[0] if clip_seeds else clip),
            "causal": o, "permutation_tests": o}


def apply(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every seed field shifted by ``offset(config)``: what the stages
    run. ``seed`` itself is kept (``offset`` of the copy is the run's, for the roles that have no
    field); apply it once, to the user's config."""
    o = offset(config)
    c = ml_collections.ConfigDict(config.to_dict())
    c.world.seed = int(c.world.seed) + o
    c.train.seed = int(c.train.seed) + o
    c.align.seeds = tuple(int(s) + o for s in c.align.seeds)
    c.control.seeds = tuple(int(s) + o for s in c.control.seeds)
    c.captioner.seed = int(c.captioner.seed) + o
    c.features.seed = int(c.features.seed) + o
    c.decomposition.seed = int(c.decomposition.seed) + o
    if c.transfer.clip.get("seed") is not None:
        c.transfer.clip.seed = int(c.transfer.clip.seed) + o
    c.clip_seeds = tuple(int(s) + o for s in c.clip_seeds)
    return c
