"""CLIP's pre-LayerNorm transformer encoder in Linen, with module names mirroring HF keys.

``encoder/layers/3/self_attn/q_proj/kernel`` here is ``encoder.layers.3.self_attn.q_proj.weight``
(transposed) in a transformers checkpoint, so the conversion table stays a readable list.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrepe_jax.models.attention import dot_product_attention, split_heads
from mrepe_jax.models.clip_config import EncoderConfig
from mrepe_jax.sites import Sites, layer_site


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


# Flax's gelu defaults to the tanh approximation; HF "gelu" is the exact erf form.
ACT_FNS = {
    "quick_gelu": quick_gelu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


def layer_norm(eps: float, name: str, dtype=jnp.float32) -> nn.LayerNorm:
    # use_fast_variance=False: E[x^2]-E[x]^2 loses precision against torch's two-pass variance.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class CLIPAttention(nn.Module):
    config: EncoderConfig
    prefix: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, sites: Sites, mask=None):
        c = self.config
        dense = functools.partial(nn.Dense, c.hidden_size, dtype=self.dtype)
        q = split_heads(dense(name="q_proj")(x), c.num_attention_heads)
        k = split_heads(dense(name="k_proj")(x), c.num_attention_heads)
        v = split_heads(dense(name="v_proj")(x), c.num_attention_heads)
        z = dot_product_attention(self, sites, f"{self.prefix}.attn", q, k, v, mask)
        return dense(name="out_proj")(z.reshape(x.shape[:-1] + (-1,)))


class CLIPMLP(nn.Module):
    config: EncoderConfig
    prefix: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, sites: Sites):
        c = self.config
        h = ACT_FNS[c.hidden_act](nn.Dense(c.intermediate_size, dtype=self.dtype, name="fc1")(x))
        h = sites(self, f"{self.prefix}.mlp.hidden", h)
        return nn.Dense(c.hidden_size, dtype=self.dtype, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    config: EncoderConfig
    tower: str
    index: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, sites: Sites, mask=None):
        p = f"{self.tower}.layers.{self.index}"
        eps = self.config.layer_norm_eps
        h = sites(self, layer_site(self.tower, self.index, "resid_pre"), h)
        a = CLIPAttention(self.config, p, self.dtype, name="self_attn")(
            layer_norm(eps, "layer_norm1", self.dtype)(h), sites, mask
        )
        a = sites(self, f"{p}.attn_out", a)
        h = sites(self, f"{p}.resid_mid", h + a)
        m = CLIPMLP(self.config, p, self.dtype, name="mlp")(layer_norm(eps, "layer_norm2", self.dtype)(h), sites)
        m = sites(self, f"{p}.mlp_out", m)
        return sites(self, f"{p}.resid_post", h + m)


class CLIPLayerCollection(nn.Module):
    config: EncoderConfig
    tower: str
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.layers = [
            CLIPEncoderLayer(self.config, self.tower, i, self.dtype, name=str(i))
            for i in range(self.config.num_hidden_layers)
        ]

    def __call__(self, h, sites: Sites, mask=None, start: int = 0, stop: int | None = None):
        stop = self.config.num_hidden_layers if stop is None else stop
        for layer in self.layers[start:stop]:
            h = layer(h, sites, mask)
        return h


class CLIPEncoder(nn.Module):
    config: EncoderConfig
    tower: str
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.layers = CLIPLayerCollection(self.config, self.tower, self.dtype)

    def __call__(self, h, sites: Sites, mask=None, start: int = 0, stop: int | None = None):
        n = self.config.num_hidden_layers
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"layer range [{start}, {stop}) is outside the {self.tower} tower's 0..{n}")
        return self.layers(h, sites, mask, start, stop)
