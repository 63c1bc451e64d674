"""Alignment map modules (eq 4) and the Procrustes baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import ortho_group

from mrepe_jax.align.maps import AlignmentMap, init_variables, make_map, procrustes


@pytest.mark.parametrize("kind", ["mrepe", "linear", "procrustes"])
@pytest.mark.parametrize("d_in,d_out", [(12, 5), (5, 12)])
def test_output_width_follows_the_target_site(kind, d_in, d_out):
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(40, d_in)), rng.normal(size=(40, d_out))
    options = dict(hidden=16, num_anchors=6) if kind == "mrepe" else {}
    module = make_map(kind, d_out, **options)
    variables = init_variables(module, src, tgt, seed=0)
    out = module.apply(variables, jnp.asarray(src[:7], jnp.float32))
    assert out.shape == (7, d_out)
    assert module.apply(variables, jnp.zeros((2, 3, d_in))).shape == (2, 3, d_out)


def test_eq4_is_the_gated_composition():
    """phi(r) = MLP_j(MLP_i(r) * attention(r, anchors)), checked against numpy on the params."""
    rng = np.random.default_rng(1)
    module = AlignmentMap(target_dim=3, hidden=4, num_anchors=5, anchors="learned")
    r = rng.normal(size=(6, 7)).astype(np.float32)
    v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                     module.init(jax.random.key(0), jnp.zeros((1, 7))))
    p = jax.tree.map(np.asarray, v["params"])
    dense = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))  # noqa: E731
    code = dense(gelu(dense(r, "mlp_i_0")), "mlp_i_1")
    q, k, val = dense(r, "query"), dense(p["anchors"], "key"), dense(p["anchors"], "value")
    logits = q @ k.T / 2.0
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = dense(gelu(dense(code * (w @ val), "mlp_j_0")), "mlp_j_1")
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(module.apply(v, r), want, rtol=1e-4, atol=1e-5)


def test_data_anchors_are_target_rows_and_frozen_apart_from_params():
    rng = np.random.default_rng(2)
    src, tgt = rng.normal(size=(30, 4)), rng.normal(size=(30, 6))
    frozen = init_variables(AlignmentMap(6, hidden=8, num_anchors=5, anchors="data"), src, tgt, 3)
    assert "anchors" not in frozen["params"]
    rows = np.asarray(frozen["anchors"]["anchors"])
    assert all(np.isclose(tgt, a, atol=1e-6).all(1).any() for a in rows)  # each anchor is a target row
    both = init_variables(AlignmentMap(6, hidden=8, num_anchors=5), src, tgt, 3)
    np.testing.assert_array_equal(both["params"]["anchors"], rows)  # same draw, now trainable


def test_procrustes_recovers_a_rotation_and_handles_other_widths():
    rng = np.random.default_rng(3)
    w = ortho_group.rvs(6, random_state=4)
    src = rng.normal(size=(200, 6))
    p = procrustes(src, src @ w + 2.0)
    np.testing.assert_allclose(p["w"], w, atol=1e-5)
    wide = procrustes(src, rng.normal(size=(200, 9)))["w"]
    np.testing.assert_allclose(np.asarray(wide) @ np.asarray(wide).T, np.eye(6), atol=1e-5)


def test_bad_maps_are_clear_errors():
    rng = np.random.default_rng(5)
    src, tgt = rng.normal(size=(10, 4)), rng.normal(size=(10, 6))
    with pytest.raises(ValueError, match="unknown alignment map kind 'mlp'"):
        make_map("mlp", 4)
    with pytest.raises(ValueError, match=r"target representations have width 6 but the map was built for width 3"):
        init_variables(make_map("linear", 3), src, tgt, 0)
    with pytest.raises(ValueError, match=r"same N, got \(10, 4\) and \(9, 6\)"):
        init_variables(make_map("linear", 6), src, tgt[:9], 0)
    with pytest.raises(ValueError, match="needs at least one anchor, got num_anchors=0"):
        init_variables(AlignmentMap(6, num_anchors=0), src, tgt, 0)
    with pytest.raises(ValueError, match="cannot draw 32 anchors from 10 target representations"):
        init_variables(AlignmentMap(6, num_anchors=32), src, tgt, 0)
    with pytest.raises(ValueError, match="paired representations are empty"):
        init_variables(make_map("linear", 6), src[:0], tgt[:0], 0)
