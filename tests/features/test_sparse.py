"""TopK's sparse kernels (``features.sparse``) against the dense computation they replace: each
kernel's value and gradients, and ``sae.loss`` with ``k_max`` against it without, AuxK on and off,
members of another ``k`` and fewer latents than the stack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.features import sae as sae_lib
from mrepe_jax.features import sparse
from mrepe_jax.features.sae import Member, SAEConfig

B, D, S = 48, 12, 40


def _dense(idx, z):
    """The ``[B, S]`` latents holding ``z`` at ``idx`` (indices within a row distinct)."""
    return jnp.zeros((idx.shape[0], S)).at[jnp.arange(idx.shape[0])[:, None], idx].set(z)


def _distinct_indices(rng, k):
    return jnp.asarray(np.stack([rng.permutation(S)[:k] for _ in range(B)]), jnp.int32)


def test_decode_rows_and_its_gradients_equal_the_dense_decoder():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(S, D)), jnp.float32)
    idx = _distinct_indices(rng, 5)
    z = jnp.asarray(rng.normal(size=(B, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)

    def sparse_f(w, z):
        return jnp.sum(g * sparse.decode_rows(w, z, idx))

    def dense_f(w, z):
        return jnp.sum(g * (_dense(idx, z) @ w))

    np.testing.assert_allclose(sparse.decode_rows(w, z, idx), _dense(idx, z) @ w, atol=1e-5)
    for a, b in zip(jax.grad(sparse_f, (0, 1))(w, z), jax.grad(dense_f, (0, 1))(w, z)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_encode_rows_gradients_equal_the_dense_encoders():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(D, S)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(S,)), jnp.float32)
    xc = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    idx = _distinct_indices(rng, 7)
    g = jnp.asarray(rng.normal(size=(B, 7)), jnp.float32)
    rows = jnp.arange(B)[:, None]

    def sparse_f(w, b, xc):
        vals = (xc @ w + b)[rows, idx]
        return jnp.sum(g * sparse.encode_rows(w, b, xc, idx, jax.lax.stop_gradient(vals)))

    def dense_f(w, b, xc):
        return jnp.sum(g * (xc @ w + b)[rows, idx])

    np.testing.assert_allclose(sparse_f(w, b, xc), dense_f(w, b, xc), rtol=1e-6)
    for a, c in zip(jax.grad(sparse_f, (0, 1, 2))(w, b, xc), jax.grad(dense_f, (0, 1, 2))(w, b, xc)):
        np.testing.assert_allclose(a, c, atol=1e-4)


@pytest.mark.parametrize("aux_k", [0, 6])
@pytest.mark.parametrize("size,k,k_max", [(S, 4, 4), (S, 3, 6), (5, 3, 8)])
def test_sparse_topk_loss_equals_the_dense_loss(aux_k, size, k, k_max):
    """Value, every stat and every gradient; ``k < k_max`` (a member of a stack with a larger
    ``k``) and a member of fewer latents than ``k_max`` (``-inf`` slots) included."""
    rng = np.random.default_rng(2)
    cfg = SAEConfig(d_in=D, d_sae=S, architecture="topk", aux_k=aux_k)
    member = Member.of(S, size, k)
    params = sae_lib.init_params(cfg, jax.random.key(3), rng.normal(size=(64, D)), member)
    params["b_enc"] = jnp.asarray(rng.normal(size=(S,)) * 0.3, jnp.float32) * member.live
    x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
    dead = jnp.asarray(rng.random(S) < 0.4)

    def run(k_max):
        return jax.jit(jax.value_and_grad(sae_lib.loss, has_aux=True), static_argnums=(2, 5))(
            params, x, cfg, member, dead, k_max)

    (dense_loss, dense_stats), dense_grads = run(0)
    (sparse_loss, sparse_stats), sparse_grads = run(k_max)
    np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-5)
    for key in ("mse", "l0", "aux", "fired", "min_kept"):
        np.testing.assert_allclose(sparse_stats[key], dense_stats[key], rtol=1e-5, err_msg=key)
    for name in params:
        np.testing.assert_allclose(sparse_grads[name], dense_grads[name], atol=1e-5, err_msg=name)
    assert float(dense_stats["l0"]) == pytest.approx(min(k, size), abs=0.5)


@pytest.mark.parametrize("size,k,k_max", [(S, 4, 4), (S, 3, 6), (5, 3, 8)])
def test_encode_by_top_k_equals_the_radix_mask(size, k, k_max):
    rng = np.random.default_rng(4)
    cfg = SAEConfig(d_in=D, d_sae=S, architecture="topk")
    member = Member.of(S, size, k)
    params = sae_lib.init_params(cfg, jax.random.key(5), rng.normal(size=(64, D)), member)
    x = jnp.asarray(rng.normal(size=(3, 16, D)), jnp.float32)  # leading axes kept
    z = sae_lib.encode(params, x, cfg, member, k_max=k_max)
    assert z.shape == (3, 16, S)
    np.testing.assert_array_equal(z, sae_lib.encode(params, x, cfg, member))
    assert int(jnp.max(jnp.sum(z > 0, -1))) <= min(k, size)
