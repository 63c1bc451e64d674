"""One run seed (``config.seed``) reaches every random choice of a ToyWorld run; seed 0 keeps the
config's seeds as written (the documented figures' seeds)."""

import numpy as np
import pytest

from configs import toyworld as toyworld_config
from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.experiments.toyworld import identify as toyworld_identify
from mrepe_jax.experiments.toyworld import seeds as toyworld_seeds
from mrepe_jax.experiments.toyworld.pipeline import train_config
from mrepe_jax.train import toyclip

#: The seeds every config ran with before the run seed reached them (transfer_clip: tiny's second
#: CLIP sets its own seed, 1; the others inherit the CLIP's).
LEGACY = {
    None: {"world": 0, "clip": 0, "align": [0, 1, 2], "control": [0, 1, 2], "captioner": 0,
           "transfer_clip": 0, "causal": 0, "permutation_tests": 0, "features": 0, "decomposition": 0},
    "tiny": {"world": 0, "clip": 0, "align": [0, 1], "control": [0], "captioner": 0,
             "transfer_clip": 1, "causal": 0, "permutation_tests": 0, "features": 0, "decomposition": 0},
    # Each retrained CLIP s also seeds what is fitted on it (paper_protocol.seed_config).
    "paper": {"world": 0, "clip": [0, 1, 2, 3, 4], "align": [0, 1, 2, 3, 4],
              "control": [0, 1, 2, 3, 4], "captioner": 0, "transfer_clip": 0, "causal": 0,
              "permutation_tests": 0, "features": 0, "decomposition": 0},
}


def _config(arg, seed):
    c = toyworld_config.get_config(arg)
    c.seed = seed
    return c


def _as_set(v):
    return set(v) if isinstance(v, list) else {v}


@pytest.mark.parametrize("arg", list(LEGACY))
def test_seed_0_is_the_legacy_seeds_and_seed_1_changes_every_one(arg):
    zero, one = (toyworld_seeds.effective(_config(arg, s)) for s in (0, 1))
    assert {k: v for k, v in zero.items() if k not in ("run", "offset")} == LEGACY[arg]
    assert (zero["run"], one["run"]) == (0, 1)
    for role in LEGACY[arg]:
        # Disjoint, not merely shifted: no map, subset or CLIP of run seed 1 is one of run seed 0's.
        assert not _as_set(zero[role]) & _as_set(one[role]), role
    # Seed 0 runs the config as written; the seeded config of seed 1 holds the effective seeds.
    written = _config(arg, 0)
    assert toyworld_seeds.apply(written).to_dict() == written.to_dict()
    seeded = toyworld_seeds.apply(_config(arg, 1))
    assert seeded.world.seed == one["world"] and seeded.captioner.seed == one["captioner"]
    assert toyworld_seeds.offset(seeded) == one["causal"] == one["permutation_tests"]
    if arg == "paper":
        assert list(seeded.clip_seeds) == one["clip"]
    else:
        assert seeded.train.seed == one["clip"]
        assert list(seeded.align.seeds) == one["align"] and list(seeded.control.seeds) == one["control"]
        assert seeded.transfer.clip.get("seed", seeded.train.seed) == one["transfer_clip"]


def test_a_negative_run_seed_is_refused_by_name():
    with pytest.raises(ValueError, match=r"config.seed must be >= 0.*got -1"):
        toyworld_seeds.effective(_config("tiny", -1))


def test_every_config_seed_field_follows_the_run_seed():
    """A seed field that ``apply`` does not shift would ignore --config.seed: every leaf named
    ``seed``/``seeds`` (or ``clip_seeds``) must change between run seeds 0 and 1."""
    def leaves(d, path=()):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, path + (k,))
            else:
                yield path + (k,), v

    for arg in LEGACY:
        before = dict(leaves(toyworld_seeds.apply(_config(arg, 0)).to_dict()))
        after = dict(leaves(toyworld_seeds.apply(_config(arg, 1)).to_dict()))
        seeds = [p for p in before if p[-1] in ("seed", "seeds", "clip_seeds") and p != ("seed",)]
        assert seeds, arg
        for path in seeds:
            if before[path] != ():  # an empty clip_seeds has nothing to shift
                assert before[path] != after[path], (arg, path)


def test_causal_contrast_pairs_and_bootstrap_follow_the_seed(tmp_path, monkeypatch):
    config = toyworld_config.get_config("tiny")
    world = ToyWorld(ToyWorldConfig(**config.world.to_dict()))
    cfg = train_config(config)
    model = toyclip.TriModalCLIP(toyclip.model_config(world, cfg))
    params = toyclip.init_state(model, world, cfg).params
    drawn = {}
    original = world.contrast_pairs

    def spy(family, n, split="train", seed=0, **kw):
        pairs = original(family, n, split=split, seed=seed, **kw)
        drawn[seed] = (pairs.pos_values, pairs.neg_values, pairs.pos["image"])
        return pairs

    monkeypatch.setattr(world, "contrast_pairs", spy)
    run_seeds = [toyworld_seeds.effective(_config("tiny", s))["causal"] for s in (0, 1)]
    for s in run_seeds:
        (tmp_path / str(s)).mkdir()
    out = [toyworld_identify.causal_analysis(model, params, world, num_pairs=4, workdir=tmp_path / str(s),
                                             seed=s, towers=("vision",), families=("colour",),
                                             n_resamples=50)
           for s in run_seeds]
    assert sorted(drawn) == sorted(run_seeds)
    a, b = (drawn[s] for s in run_seeds)
    assert not np.array_equal(a[2], b[2])  # other images, so other pairs
    assert out[0]["vision"]["colour"] != out[1]["vision"]["colour"]
