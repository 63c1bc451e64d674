"""``train/loop.fit``: nothing non-finite is saved, resume refuses other settings, corrupt
checkpoints fall back (issue 7, items 1-3). A linear model keeps each test to a few seconds."""

import glob
import logging
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from mrepe_jax import parallel
from mrepe_jax.train import loop

W_TRUE = np.linspace(-1.0, 1.0, 8).astype(np.float32)


def init_state(lr=0.1):
    return TrainState.create(apply_fn=None, params={"w": jnp.zeros(8), "b": jnp.zeros(())},
                             tx=optax.adam(lr))


def batch_fn(nan_at=None, nan_grad_at=None):
    def get(step):
        x = np.random.default_rng(step).normal(size=(16, 8)).astype(np.float32)
        if step + 1 == nan_at:  # step numbers count completed steps, as fit's messages do
            x[3, 2] = np.nan
        grad_scale = np.float32(np.nan if step + 1 == nan_grad_at else 1.0)
        return {"x": x, "y": x @ W_TRUE, "grad_scale": grad_scale}
    return get


def step_fn(state, batch):
    def loss_fn(p):
        return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    # A finite loss whose gradient is NaN (e.g. sqrt at 0 somewhere in a real model).
    grads = jax.tree.map(lambda g: g * batch["grad_scale"], grads)
    return state.apply_gradients(grads=grads), {"loss": loss}


def saved_steps(directory):
    return sorted(int(os.path.basename(p)) for p in glob.glob(f"{directory}/*") if
                  os.path.basename(p).isdigit())


def restored_params(directory, step):
    mngr = loop.checkpoint_manager(directory)
    try:
        return mngr.restore(step, args=loop.ocp.args.Composite(
            state=loop.ocp.args.StandardRestore(init_state())))["state"].params
    finally:
        mngr.close()


def fit(directory, num_steps=60, checkpoint_every=30, batches=None, **kw):
    return loop.fit(init_state(), step_fn, batches or batch_fn(), num_steps, checkpoint_dir=directory,
                    checkpoint_every=checkpoint_every, progress=False, **kw)


# ---- item 1: a non-finite loss or state is never checkpointed ----


@pytest.mark.parametrize("every,per_call", [(30, 1), (5, 1), (10, 1), (30, 4), (10, 10)])
def test_nan_loss_stops_at_its_step_and_leaves_no_nan_checkpoint(tmp_path, every, per_call):
    # per_call > 1: the bad step is found inside a call of several steps, by its own number.
    with pytest.raises(FloatingPointError, match=r"train: the loss became non-finite at step 10; "
                                                 r"stopped before saving it"):
        fit(tmp_path, checkpoint_every=every, batches=batch_fn(nan_at=10), steps_per_call=per_call)
    assert saved_steps(tmp_path) == [s for s in (5,) if s % every == 0]
    for s in saved_steps(tmp_path):
        assert all(np.isfinite(v).all() for v in jax.tree.leaves(restored_params(tmp_path, s)))


def test_finite_loss_with_nan_gradient_is_caught_at_its_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"the state at .*params.* became non-finite at "
                                                 r"step 10; stopped before saving it; the last "
                                                 r"checkpoint is step 5"):
        fit(tmp_path, checkpoint_every=5, batches=batch_fn(nan_grad_at=10), steps_per_call=5)
    assert saved_steps(tmp_path) == [5]


# ---- several steps per compiled call ----


@pytest.mark.parametrize("per_call,every,start,end,want", [
    (10, 500, 0, 1000, 10), (10, 2, 0, 4, 2), (10, 500, 0, 350, 10), (10, 7, 0, 21, 7),
    (4, 6, 3, 9, 3), (1, 500, 0, 1000, 1), (10, 30, 0, 0, 10), (8, 12, 0, 60, 6)])
def test_steps_per_call_divides_every_save_and_the_ends(per_call, every, start, end, want):
    assert loop.steps_per_call_for(per_call, every, start, end) == want


def test_several_steps_per_call_train_as_one_step_at_a_time(tmp_path, caplog):
    one = fit(tmp_path / "one", num_steps=60, checkpoint_every=30)
    loop._guarded.cache_clear()  # a fresh program, whatever compiled earlier in this process
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
        ten = fit(tmp_path / "ten", num_steps=60, checkpoint_every=30, steps_per_call=10)
    compiled = [r for r in caplog.records if "XLA compilation of jit(guarded)" in r.getMessage()]
    assert len(compiled) == 1  # six calls of ten steps, one program
    np.testing.assert_allclose(ten.losses, one.losses, rtol=1e-6, atol=1e-7)
    assert ten.losses.shape == (60,) and ten.metrics["loss"].shape == (60,)
    for a, b in zip(jax.tree.leaves(ten.state.params), jax.tree.leaves(one.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert saved_steps(tmp_path / "ten") == saved_steps(tmp_path / "one") == [30, 60]
    # Killed after 30 steps and resumed: the uninterrupted run's parameters.
    fit(tmp_path / "kill", num_steps=60, checkpoint_every=30, steps_per_call=10, stop_after=30)
    resumed = fit(tmp_path / "kill", num_steps=60, checkpoint_every=30, steps_per_call=10)
    assert resumed.resumed_from == 30 and resumed.losses.shape == (30,)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(ten.state.params)):
        np.testing.assert_array_equal(a, b)


def xy_step(state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2))(
        state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


@pytest.mark.parametrize("on_mesh", [False, True])
def test_a_batch_spec_compiles_the_step_while_a_thread_builds_the_first_batches(tmp_path, caplog, on_mesh):
    # On a mesh the batches' sharding is part of the program's key: the spec must carry it too.
    mesh = parallel.make_mesh() if on_mesh else None
    threads = {}

    def batches(step):  # records which thread built each batch
        threads[step] = threading.current_thread().name
        b = batch_fn()(step)
        return {"x": b["x"], "y": b["y"]}

    def run(directory, **kw):
        return loop.fit(init_state(), xy_step, batches, 20, checkpoint_dir=directory, checkpoint_every=10,
                        progress=False, steps_per_call=5, mesh=mesh, **kw)

    reference = run(tmp_path / "plain")
    loop._guarded.cache_clear()
    threads.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
        res = run(tmp_path / "spec", batch_spec=loop.spec_of(batches(0)))
    compiled = [r for r in caplog.records if "XLA compilation of jit(guarded)" in r.getMessage()]
    assert len(compiled) == 1  # compiled from the spec; the first call found it in jit's cache
    assert all(threads[j].startswith("fit-batches") for j in range(1, 5))  # the first call's batches
    assert not any(threads[j].startswith("fit-batches") for j in range(5, 20))
    np.testing.assert_array_equal(res.losses, reference.losses)
    # Resumed at step 10: the prefetched call is the one from step 10.
    run(tmp_path / "resume", stop_after=10)
    threads.clear()
    resumed = run(tmp_path / "resume", batch_spec=loop.spec_of(batches(0)))
    assert threads[10].startswith("fit-batches") and not threads[15].startswith("fit-batches")
    np.testing.assert_array_equal(resumed.losses, reference.losses[10:])


def test_a_batch_spec_that_does_not_match_the_batches_is_named():
    spec = loop.spec_of(batch_fn()(0))
    spec["x"] = jax.ShapeDtypeStruct((16, 9), np.float32)
    with pytest.raises(ValueError, match=r"train: the batch of step 0 has \['x'\] of shape \(16, 8\) "
                                         r"float32, but batch_spec says \(16, 9\) float32"):
        fit(None, batch_spec=spec)
    with pytest.raises(ValueError, match=r"the batch of step 0 has the structure .* but batch_spec says"):
        fit(None, batch_spec={"x": spec["x"]})


def test_steps_per_call_below_one_is_refused():
    with pytest.raises(ValueError, match="steps_per_call >= 1, got 60, 30 and 0"):
        fit(None, steps_per_call=0)


def test_nan_without_a_checkpoint_dir_is_also_an_error():
    with pytest.raises(FloatingPointError, match="step 3"):
        loop.fit(init_state(), step_fn, batch_fn(nan_at=3), 8, progress=False)


# ---- item 2: resuming with other trajectory-defining settings is refused ----


def test_resume_with_fewer_or_more_steps_or_other_settings_is_an_error(tmp_path):
    fit(tmp_path, num_steps=6, checkpoint_every=3, run_config={"lr": 0.1})
    with pytest.raises(ValueError, match=r"step 6 in .* other settings.*\n  num_steps: checkpoint 6, "
                                         r"now 4\n.*delete"):
        fit(tmp_path, num_steps=4, checkpoint_every=3, run_config={"lr": 0.1})
    with pytest.raises(ValueError, match=r"num_steps: checkpoint 6, now 9"):
        fit(tmp_path, num_steps=9, checkpoint_every=3, run_config={"lr": 0.1})
    with pytest.raises(ValueError, match=r"lr: checkpoint 0.1, now 0.2"):
        fit(tmp_path, num_steps=6, checkpoint_every=3, run_config={"lr": 0.2})
    again = fit(tmp_path, num_steps=6, checkpoint_every=7, run_config={"lr": 0.1})  # not a setting
    assert again.resumed_from == 6 and len(again.losses) == 0


def test_state_past_num_steps_without_checkpoints_is_an_error():
    state = init_state().replace(step=5)
    with pytest.raises(ValueError, match="state is at step 5, past num_steps=3"):
        loop.fit(state, step_fn, batch_fn(), 3, progress=False)


# ---- item 3: a corrupt latest checkpoint falls back to the previous good one ----


def corrupt(directory, step):
    files = glob.glob(f"{directory}/{step}/state/**/d/*", recursive=True)
    assert files
    for f in files:
        b = bytearray(open(f, "rb").read())
        for i in range(len(b) // 2, min(len(b), len(b) // 2 + 16)):
            b[i] ^= 0xFF
        open(f, "wb").write(bytes(b))


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    straight = fit(tmp_path / "a", num_steps=8, checkpoint_every=2)
    first = fit(tmp_path / "b", num_steps=8, checkpoint_every=2, stop_after=4)
    assert saved_steps(tmp_path / "b") == [2, 4]
    corrupt(tmp_path / "b", 4)
    with pytest.warns(RuntimeWarning, match=r"checkpoint step 4 in .*/b is unusable: it cannot be read "
                                            r".*moved it to .*/b/4.corrupt and resumed from step 2"):
        resumed = fit(tmp_path / "b", num_steps=8, checkpoint_every=2)
    assert int(first.state.step) == 4 and resumed.resumed_from == 2
    assert os.path.isdir(tmp_path / "b" / "4.corrupt")  # kept, not deleted
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(a, b)


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path):
    fit(tmp_path, num_steps=4, checkpoint_every=2)
    corrupt(tmp_path, 2)
    corrupt(tmp_path, 4)
    with pytest.raises(loop.CheckpointError, match=r"no checkpoint in .* can be restored \(step 4: it "
                                                   r"cannot be read .*step 2: .*delete"):
        fit(tmp_path, num_steps=4, checkpoint_every=2)
    assert saved_steps(tmp_path) == [2, 4]  # nothing moved or lost when nothing could be restored


def test_a_checkpoint_holding_nan_is_skipped(tmp_path):
    fit(tmp_path, num_steps=8, checkpoint_every=2, stop_after=4)
    mngr = loop.checkpoint_manager(tmp_path, keep=3)
    nan_state = init_state().replace(step=6, params={"w": jnp.full(8, jnp.nan), "b": jnp.zeros(())})
    mngr.save(6, args=loop._save_args(nan_state, {"num_steps": 8}))
    mngr.wait_until_finished()
    mngr.close()
    with pytest.warns(RuntimeWarning, match=r"step 6 .* the state at .*'w'.* is non-finite; moved "
                                            r"it to .*6.corrupt and resumed from step 4"):
        resumed = fit(tmp_path, num_steps=8, checkpoint_every=2)
    assert resumed.resumed_from == 4 and int(resumed.state.step) == 8
