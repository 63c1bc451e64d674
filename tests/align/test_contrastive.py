"""InfoNCE (eq 3) against a direct numpy transcription of the equation, and its sharded form
(``sharded_info_nce``) against the single-device one on 8 virtual CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax import parallel
from mrepe_jax.align.contrastive import clip_loss, info_nce, sharded_info_nce
from tests.test_parallel import run_with_devices


def eq3(src, tgt, tau, negatives=None):
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
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


SCRIPT = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from mrepe_jax import parallel
    from mrepe_jax.align.contrastive import info_nce, sharded_info_nce

    mesh = parallel.make_mesh()
    sharded = sharded_info_nce(mesh)
    rng = np.random.default_rng(0)
    B, D, M = 16, 6, 5
    f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    src, tgt, mem, W = f32(B, D), f32(B, D), f32(M, D), f32(D, D)
    tau = jnp.float32(0.2)

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))

    res = {"devices": jax.device_count(), "err": {}, "scale": {}}
    for sym in (False, True):
        for name, neg in (("none", None), ("m0", jnp.zeros((0, D), jnp.float32)), ("m5", mem)):
            key = f"sym{int(sym)}_{name}"
            def one(s, t, w, tau, loss):
                return loss(s @ w, t, tau, neg, symmetric=sym)
            argnums = (0, 1, 2, 3)
            ref_v, ref_g = jax.value_and_grad(one, argnums)(src, tgt, W, tau, info_nce)
            v, g = jax.value_and_grad(one, argnums)(src, tgt, W, tau, sharded)
            jv, jg = jax.jit(jax.value_and_grad(one, argnums), static_argnums=4)(
                src, tgt, W, tau, sharded)
            res["err"][key + "_value"] = rel(v, ref_v)
            res["err"][key + "_jit_value"] = rel(jv, ref_v)
            for i, n in enumerate(("src", "tgt", "W", "tau")):
                res["err"][f"{key}_grad_{n}"] = rel(g[i], ref_g[i])
                res["err"][f"{key}_jit_grad_{n}"] = rel(jg[i], ref_g[i])
                res["scale"][f"{key}_grad_{n}"] = float(np.max(np.abs(ref_g[i])))
            # inputs already placed batch-sharded on the mesh give the same
            ps, pt = parallel.shard_batch((src, tgt), mesh)
            res["err"][key + "_placed_value"] = rel(sharded(ps @ W, pt, tau, neg, symmetric=sym), ref_v)
    gm = jax.grad(lambda m: sharded(src, tgt, tau, m, symmetric=True))(mem)
    res["mem_grad_max"] = float(np.max(np.abs(gm)))
    try:
        sharded(src[:12], tgt[:12], tau)
        res["indivisible"] = None
    except ValueError as e:
        res["indivisible"] = str(e)
    print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def eight():
    return run_with_devices(SCRIPT)


def test_sharded_info_nce_on_eight_devices_equals_one(eight):
    assert eight["devices"] == 8
    # 3 memories x 2 directions x (value, jit value, placed value, 4 grads, 4 jit grads)
    assert len(eight["err"]) == 6 * 11
    for key, err in eight["err"].items():  # max abs difference / max(1, max |reference|)
        assert err <= 1e-6, (key, err)
    for key, scale in eight["scale"].items():
        assert scale > 1e-3, key  # the gradients compared are not vacuous
    assert eight["mem_grad_max"] == 0.0


def test_sharded_info_nce_rejects_indivisible_batch(eight):
    assert "batch size 12 is not divisible by the 'data' mesh axis size 8" in eight["indivisible"]
