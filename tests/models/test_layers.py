"""``models.layers.LayerNorm``: flax's LayerNorm outputs and autodiff gradients, from its own VJP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrepe_jax.models.layers import LayerNorm


@pytest.mark.parametrize("shape", [(3, 5, 16), (7, 32)])
def test_matches_flax_layer_norm_values_and_gradients(shape):
    k = jax.random.split(jax.random.key(0), 4)
    x = 3.0 + 2.0 * jax.random.normal(k[0], shape)  # a large mean: the two-pass variance matters
    params = {"scale": 1.0 + 0.3 * jax.random.normal(k[1], shape[-1:]),
              "bias": 0.3 * jax.random.normal(k[2], shape[-1:])}
    g = jax.random.normal(k[3], shape)
    ours = LayerNorm(1e-5)
    ref = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False)

    def loss(module, p, x):
        return jnp.sum(module.apply({"params": p}, x) * g)

    np.testing.assert_allclose(ours.apply({"params": params}, x), ref.apply({"params": params}, x),
                               atol=1e-5)
    got = jax.grad(loss, argnums=(1, 2))(ours, params, x)
    want = jax.grad(loss, argnums=(1, 2))(ref, params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)
    # and under jit + vmap, as the layer stacks use it
    batched = jax.jit(jax.vmap(lambda x: ours.apply({"params": params}, x)))(x[None])
    np.testing.assert_allclose(batched[0], ours.apply({"params": params}, x), atol=1e-6)


def test_bf16_output_with_float32_statistics():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64)) + 100.0, jnp.bfloat16)
    params = {"scale": jnp.ones(64), "bias": jnp.zeros(64)}
    y = LayerNorm(1e-5, jnp.bfloat16).apply({"params": params}, x)
    assert y.dtype == jnp.bfloat16
    ref = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False).apply({"params": params}, x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=2e-2)
