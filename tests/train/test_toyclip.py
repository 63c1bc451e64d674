"""The training loop resumes exactly, and the tri-modal model trains on ToyWorld."""

import ml_collections
import numpy as np
import pytest

from mrepe_jax.data.toyworld import ToyWorld, ToyWorldConfig
from mrepe_jax.train import loop, toyclip
from tests.models.params import flat


def tiny_cfg(**overrides):
    cfg = dict(
        hidden_size=16, mlp_size=32, num_layers=1, num_heads=2, patch_size=8, audio_patch_size=8,
        projection_dim=8, seed=0, pool_size=64, batch_size=16, num_steps=6, learning_rate=1e-3,
        warmup_steps=2, weight_decay=0.0, prompt_fraction=0.5, checkpoint_every=2)
    return ml_collections.ConfigDict({**cfg, **overrides})


@pytest.fixture(scope="module")
def world_and_pool():
    world = ToyWorld(ToyWorldConfig())
    return world, toyclip.render_pool(world, 64)



@pytest.mark.slow  # ~16 s; loop.fit's resume is also checked by test_loop, the captioner and the maps
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, world_and_pool):
    world, pool = world_and_pool
    cfg = tiny_cfg()
    _, straight = toyclip.train(world, cfg, tmp_path / "a", progress=False, pool=pool)
    _, first = toyclip.train(world, cfg, tmp_path / "b", stop_after=3, progress=False, pool=pool)
    assert int(first.state.step) == 3
    _, resumed = toyclip.train(world, cfg, tmp_path / "b", progress=False, pool=pool)
    assert resumed.resumed_from == 3 and int(resumed.state.step) == 6
    a, b = flat(straight.state.params), flat(resumed.state.params)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))
    # and a third call finds the finished run: nothing to redo
    _, again = toyclip.train(world, cfg, tmp_path / "b", progress=False, pool=pool)
    assert again.resumed_from == 6 and len(again.losses) == 0
    # Another schedule would make "resumed == uninterrupted" silently false: refused, named.
    with pytest.raises(ValueError, match=r"learning_rate: checkpoint 0.001, now 0.002"):
        toyclip.train(world, tiny_cfg(learning_rate=2e-3), tmp_path / "b", progress=False, pool=pool)
    with pytest.raises(ValueError, match=r"num_steps: checkpoint 6, now 4"):
        toyclip.train(world, tiny_cfg(num_steps=4), tmp_path / "b", progress=False, pool=pool)


def test_loss_decreases(world_and_pool):
    world, pool = world_and_pool
    _, res = toyclip.train(world, tiny_cfg(num_steps=30, learning_rate=3e-3), progress=False, pool=pool)
    assert res.losses[-5:].mean() < res.losses[:5].mean() - 0.1


def test_batches_are_a_pure_function_of_the_step(world_and_pool):
    _, pool = world_and_pool
    f = toyclip.batch_fn(lambda: pool, 16, 0, 0.5)
    g = toyclip.batch_fn(lambda: pool, 16, 0, 0.5)
    for step in (0, 7, 3):
        for k, v in f(step).items():
            np.testing.assert_array_equal(v, g(step)[k])
    assert not np.array_equal(f(0)["image"], f(1)["image"])


def test_batch_spec_is_the_shapes_of_the_batches(world_and_pool):
    # fit compiles the train step from it while the pool renders: it must be the batches' own.
    world, pool = world_and_pool
    model = toyclip.TriModalCLIP(toyclip.model_config(world, tiny_cfg()))
    batches = toyclip.batch_fn(lambda: toyclip.with_audio_features(model, pool), 16, 0, 0.5)
    assert toyclip.batch_spec(model, world, 16, 0.5) == loop.spec_of(batches(5))
