"""Training alignment maps through loop.fit: learning, resuming, a SIGKILL mid-run."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mrepe_jax.align.train import MapTrainConfig, batch_fn, train_map

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pairs(n=128, seed=0, linear=False):
    """Targets are a fixed (nonlinear unless ``linear``) function of the sources: learnable."""
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 8)).astype(np.float32)
    tgt = src @ rng.normal(size=(8, 6))
    return src, (tgt if linear else np.tanh(tgt)).astype(np.float32)


def _top1(mapped, tgt):
    sims = (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) @ (
        tgt / np.linalg.norm(tgt, axis=1, keepdims=True)).T
    return float(np.mean(np.argmax(sims, 1) == np.arange(len(tgt))))


@pytest.mark.parametrize("kind,memory", [("mrepe", 0), ("mrepe", 32), ("linear", 32)])
def test_training_lowers_the_loss_and_retrieves_held_out_pairs(kind, memory):
    src, tgt = _pairs(256, linear=kind == "linear")
    # The linear map's loss surface is flatter at tau 0.07: it needs a larger step to converge.
    cfg = MapTrainConfig(kind=kind, hidden=32, num_anchors=8, batch_size=32, epochs=30,
                         learning_rate=1e-2 if kind == "linear" else 3e-3, memory_size=memory)
    fitted = train_map(cfg, src[:192], tgt[:192], source_site="a", target_site="b", progress=False)
    losses = np.asarray(fitted.info["losses"])
    assert len(losses) == cfg.steps(192) == 180
    assert losses[-10:].mean() < 0.6 * losses[:10].mean()
    held_out = _top1(np.asarray(fitted(src[192:])), tgt[192:])
    assert held_out > 0.5, held_out  # chance is 1/64


def test_memory_rows_are_a_pure_function_of_the_step():
    src, tgt = _pairs()
    get = batch_fn(src[None], tgt[None], 32, 64, seeds=(3,))
    a, b = get(5), get(5)
    assert a["memory"].shape == (32, 2, 1, 6)  # [B, M/B, K, d]
    np.testing.assert_array_equal(a["memory"], b["memory"])
    assert not np.array_equal(get(6)["memory"], a["memory"])


def test_resumed_training_equals_uninterrupted(tmp_path):
    src, tgt = _pairs()
    cfg = MapTrainConfig(hidden=16, num_anchors=4, batch_size=32, epochs=3, checkpoint_every=2)
    whole = train_map(cfg, src, tgt, source_site="a", target_site="b", progress=False)
    kw = dict(source_site="a", target_site="b", checkpoint_dir=tmp_path / "ckpt", progress=False)
    train_map(cfg, src, tgt, stop_after=5, **kw)
    resumed = train_map(cfg, src, tgt, **kw)
    assert resumed.info["resumed_from"] == 5  # stop_after saves at its last step
    np.testing.assert_array_equal(np.asarray(resumed(src)), np.asarray(whole(src)))
    with pytest.raises(ValueError, match="learning_rate: checkpoint 0.0001, now 0.001"):
        train_map(MapTrainConfig(**{**cfg.__dict__, "learning_rate": 1e-3, "epochs": 4}), src, tgt, **kw)


KILLED = """
    import pathlib, sys, time
    import numpy as np
    from mrepe_jax.align import train as T
    from tests.align.test_train import _pairs, CFG
    src, tgt = _pairs()
    inner = T.batch_fn
    def slow(*a, **k):
        get = inner(*a, **k)
        def at(step):
            if step == 9:  # park after the step-8 checkpoint was issued: the parent kills us here
                pathlib.Path(sys.argv[2]).write_text("parked")
                time.sleep(600)
            return get(step)
        return at
    T.batch_fn = slow
    T.train_map(CFG, src, tgt, source_site="a", target_site="b", checkpoint_dir=sys.argv[1],
                progress=False)
"""
CFG = MapTrainConfig(hidden=16, num_anchors=4, batch_size=32, epochs=4, checkpoint_every=4)


def test_a_sigkilled_training_resumes_to_the_uninterrupted_params(tmp_path):
    src, tgt = _pairs()
    flag = tmp_path / "parked"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path / "ckpt"),
                             str(flag)], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        deadline = time.time() + 240
        while not flag.exists():
            assert proc.poll() is None, f"training subprocess exited early with {proc.returncode}"
            assert time.time() < deadline, "training subprocess never reached step 9"
            time.sleep(0.2)
        time.sleep(1.0)  # let the in-flight step-8 save land (or not: a partial one is skipped)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed = train_map(CFG, src, tgt, source_site="a", target_site="b",
                        checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert resumed.info["resumed_from"] in (4, 8) and resumed.info["steps"] == CFG.steps(len(src))
    whole = train_map(CFG, src, tgt, source_site="a", target_site="b", progress=False)
    np.testing.assert_array_equal(np.asarray(resumed(src)), np.asarray(whole(src)))


def test_bad_training_inputs_are_clear_errors():
    src, tgt = _pairs()
    with pytest.raises(ValueError, match="unknown anchor mode 'random'"):
        MapTrainConfig(anchors="random")
    with pytest.raises(ValueError, match="MapTrainConfig.epochs must be >= 1, got 0"):
        MapTrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"100 pairs are fewer than one batch of 128 \(MapTrainConfig.batch_size\)"):
        train_map(MapTrainConfig(), src[:100], tgt[:100], source_site="a", target_site="b")
    bad = tgt.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"target representations hold non-finite values \(first bad row 7\)"):
        train_map(MapTrainConfig(batch_size=32), src, bad, source_site="a", target_site="b")


def test_stacked_maps_equal_maps_trained_one_by_one():
    """K maps in one stack (one program) are K independent runs: same seeds, same params."""
    from mrepe_jax.align.train import train_maps

    (s0, t0), (s1, t1) = _pairs(seed=1), _pairs(seed=2)
    cfg = MapTrainConfig(hidden=16, num_anchors=4, batch_size=32, epochs=2, memory_size=32)
    both = train_maps(cfg, np.stack([s0, s1]), np.stack([t0, t1]), seeds=(5, 6),
                      source_site=("a", "c"), target_site="b", progress=False)
    for fitted, s, t, seed in zip(both, (s0, s1), (t0, t1), (5, 6)):
        alone = train_map(MapTrainConfig(**{**cfg.__dict__, "seed": seed}), s, t,
                          source_site=fitted.source_site, target_site="b", progress=False)
        np.testing.assert_allclose(np.asarray(fitted(s)), np.asarray(alone(s)), atol=1e-5)
        np.testing.assert_allclose(fitted.info["losses"], alone.info["losses"], atol=1e-4)
    assert [m.source_site for m in both] == ["a", "c"] and both[1].info["seed"] == 6


def test_memory_must_be_a_multiple_of_the_batch():
    with pytest.raises(ValueError, match=r"memory_size \(40\) must be a multiple of batch_size \(32\)"):
        MapTrainConfig(batch_size=32, memory_size=40)
