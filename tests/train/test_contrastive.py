"""InfoNCE (eq 3) against a direct numpy transcription of the equation. Its sharded form on 8
virtual CPU devices is tested with the other sharded stages (tests/test_sharded_stages.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax import parallel
from mrepe_jax.train.contrastive import clip_loss, info_nce, sharded_info_nce


def eq3(src, tgt, tau, negatives=None):
    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    cands = tgt if negatives is None else np.concatenate([tgt, negatives])
    losses = [-np.log(np.exp(cos(s, tgt[i]) / tau) / sum(np.exp(cos(s, r) / tau) for r in cands))
              for i, s in enumerate(src)]
    return np.mean(losses)


def eq3_symmetric(src, tgt, tau, negatives=None):
    """Mean of both directions; the memory only joins the src->tgt negatives."""
    return 0.5 * (eq3(src, tgt, tau, negatives) + eq3(tgt, src, tau))


def test_info_nce_matches_equation_3():
    rng = np.random.default_rng(0)
    src, tgt, neg = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    np.testing.assert_allclose(info_nce(src, tgt, 0.1), eq3(src, tgt, 0.1), rtol=1e-5)
    np.testing.assert_allclose(info_nce(src, tgt, 0.1, neg), eq3(src, tgt, 0.1, neg), rtol=1e-5)
    np.testing.assert_allclose(clip_loss(src, tgt, 10.0),
                               0.5 * (eq3(src, tgt, 0.1) + eq3(tgt, src, 0.1)), rtol=1e-5)


@pytest.mark.parametrize("m", [None, 0, 7])
@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_symmetric_and_memory_match_equation_3(m, symmetric):
    rng = np.random.default_rng(1)
    src, tgt = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    neg = None if m is None else rng.normal(size=(m, 8))
    ref = (eq3_symmetric if symmetric else eq3)(src, tgt, 0.2, neg)
    np.testing.assert_allclose(info_nce(src, tgt, 0.2, neg, symmetric=symmetric), ref, rtol=1e-5)


def test_empty_memory_is_no_memory():
    rng = np.random.default_rng(2)
    src, tgt = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for sym in (False, True):
        np.testing.assert_allclose(info_nce(src, tgt, 0.5, np.zeros((0, 3)), symmetric=sym),
                                   info_nce(src, tgt, 0.5, symmetric=sym), rtol=1e-6)


def test_memory_gets_no_gradient():
    rng = np.random.default_rng(3)
    src, tgt, neg = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(4, 3), (4, 3), (5, 3)])
    g = jax.grad(lambda n: info_nce(src, tgt, 0.5, n))(neg)
    assert g.shape == (5, 3) and not np.any(np.asarray(g))


def test_info_nce_is_stable_at_small_temperature():
    rng = np.random.default_rng(4)
    src, tgt = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    for sym in (False, True):
        value = float(info_nce(src, tgt, 1e-4, rng.normal(size=(3, 8)), symmetric=sym))
        assert np.isfinite(value) and value >= 0


def test_info_nce_traced_temperature():
    rng = np.random.default_rng(5)
    src, tgt = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    value = jax.jit(lambda s: clip_loss(src, tgt, s))(10.0)
    np.testing.assert_allclose(value, eq3_symmetric(src, tgt, 0.1), rtol=1e-5)
    assert np.isfinite(jax.grad(lambda s: clip_loss(src, tgt, s))(10.0))


def test_info_nce_shape_errors():
    with pytest.raises(ValueError, match=r"matching \[B, D\] inputs, got \(5, 8\) and \(4, 8\)"):
        info_nce(np.zeros((5, 8)), np.zeros((4, 8)), 0.1)
    with pytest.raises(ValueError, match=r"matching \[B, D\] inputs, got \(5,\) and \(5,\)"):
        info_nce(np.zeros(5), np.zeros(5), 0.1, symmetric=True)
    with pytest.raises(ValueError, match=r"negatives must be \[M, D\] with D=8 to match inputs "
                                         r"\(5, 8\), got \(3, 7\)"):
        info_nce(np.ones((5, 8)), np.ones((5, 8)), 0.1, np.ones((3, 7)))
    with pytest.raises(ValueError, match=r"negatives must be \[M, D\] with D=8 .* got \(8,\)"):
        info_nce(np.ones((5, 8)), np.ones((5, 8)), 0.1, np.ones(8))
    for tau in (0.0, -0.5):
        with pytest.raises(ValueError, match=rf"temperature must be positive, got {tau}"):
            info_nce(np.ones((5, 8)), np.ones((5, 8)), tau)
    with pytest.raises(ValueError, match=r"temperature must be a scalar, got shape \(2,\)"):
        info_nce(np.ones((5, 8)), np.ones((5, 8)), np.ones(2))


def test_sharded_on_one_device_and_its_errors():
    mesh = parallel.make_mesh()
    loss = sharded_info_nce(mesh)
    rng = np.random.default_rng(6)
    src, tgt, neg = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    np.testing.assert_allclose(loss(src, tgt, 0.3, neg, symmetric=True),
                               eq3_symmetric(src, tgt, 0.3, neg), rtol=1e-5)
    with pytest.raises(ValueError, match=r"sharded_info_nce needs matching \[B, D\] inputs"):
        loss(np.ones((4, 3)), np.ones((4, 2)), 0.3)
    with pytest.raises(ValueError, match=r"temperature must be positive, got 0.0"):
        loss(np.ones((4, 3)), np.ones((4, 3)), 0.0)
    with pytest.raises(ValueError, match=r"there is no 'batch' axis"):
        sharded_info_nce(mesh, "batch")
