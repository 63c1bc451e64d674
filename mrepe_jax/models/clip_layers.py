"""CLIP's pre-LayerNorm transformer encoder in Linen, with module names mirroring HF keys.

``encoder/layers/3/self_attn/q_proj/kernel`` here is ``encoder.layers.3.self_attn.q_proj.weight``
(transposed) in a transformers checkpoint, so the conversion table stays a readable list.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrepe_jax.models import layer_stack
from mrepe_jax.models.attention import self_attention
from mrepe_jax.models.clip_config import EncoderConfig
from mrepe_jax.models.execution import Execution
from mrepe_jax.sites import COLLECTION, LayerSites, Sites


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


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters) applied to the flattened leading axes, ``[..., D] -> [N, D]``.

    Why: for a 3-D ``[B, T, D] x [D, E]`` product XLA:CPU computes the kernel gradient from a
    transposed copy of the incoming gradient, and fuses the whole elementwise backward (LayerNorm,
    GELU, residual sums) into that copy, reading each of its inputs with a stride: measured on the
    ToyWorld CLIP, one such fusion took 6 ms of a 30 ms backward on one core. A 2-D product needs no
    copy. The reshapes are free (bitcasts) on every backend.
    """

    def __call__(self, inputs):
        lead = inputs.shape[:-1]
        y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return y.reshape(lead + y.shape[-1:])


QKV = ("q_proj", "k_proj", "v_proj")


class DenseParams(nn.Module):
    """The ``kernel``/``bias`` of an ``nn.Dense`` (same names, shapes and initialisers), returned
    instead of applied, so that several projections of one input can run as one matmul."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return kernel.astype(self.dtype), bias.astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, scale, bias, eps: float):
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    # Two-pass variance, in float32: E[x^2]-E[x]^2 loses precision against torch's LayerNorm.
    x32 = x.astype(jnp.float32)
    xc = x32 - x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    return (xhat * scale + bias).astype(x.dtype), (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, g):
    xhat, rstd, scale = res
    g32 = g.astype(jnp.float32)
    gh = g32 * scale
    dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    batch_axes = tuple(range(g.ndim - 1))
    return dx.astype(g.dtype), (g32 * xhat).sum(batch_axes), g32.sum(batch_axes)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm with ``nn.LayerNorm``'s parameters (``scale``, ``bias``) and a hand-written
    gradient: the backward reuses the normalised input and 1/std instead of differentiating the
    two reductions (measured on the ToyWorld CLIP train step, 2 CPU cores: 43 -> 41 ms).
    Reverse mode only: ``jax.jvp`` through it is not supported (``jax.grad``/``vjp`` are)."""

    epsilon: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (d,))
        bias = self.param("bias", nn.initializers.zeros_init(), (d,))
        return _layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(eps: float, name: str, dtype=jnp.float32) -> LayerNorm:
    return LayerNorm(eps, dtype, name=name)


class CLIPAttention(nn.Module):
    config: EncoderConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, site: LayerSites, mask=None):
        c = self.config
        d = c.hidden_size
        site = site.bind(self)
        # q, k and v keep their own parameters (the checkpoint's q_proj/k_proj/v_proj) but run as
        # one [D, 3D] matmul: one GEMM forward, one kernel-gradient GEMM backward.
        kernels, biases = zip(*(DenseParams(d, self.dtype, name=n)(d) for n in QKV))
        qkv = x.astype(self.dtype).reshape(-1, d) @ jnp.concatenate(kernels, 1) + jnp.concatenate(biases)
        qkv = qkv.reshape(x.shape[:-1] + (3 * d,))
        z = self_attention(site, qkv, c.num_attention_heads, mask, self.execution)
        return Dense(d, dtype=self.dtype, name="out_proj")(z)


class CLIPMLP(nn.Module):
    config: EncoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, site: LayerSites):
        c = self.config
        h = ACT_FNS[c.hidden_act](Dense(c.intermediate_size, dtype=self.dtype, name="fc1")(x))
        h = site.bind(self)("mlp.hidden", h)
        return Dense(c.hidden_size, dtype=self.dtype, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    """One pre-LN block. ``index`` is the layer's number: an int, or a traced array when the layer
    runs inside a scanned stack (``layer_stack.run_stack``); site names follow it either way."""

    config: EncoderConfig
    tower: str
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()
    # Families whose pre-LN block differs only in its attention (BLIP-2's EVA ViT) override this.
    attention_cls: ClassVar[type] = CLIPAttention

    @nn.compact
    def __call__(self, h, sites: Sites, mask, index):
        site = LayerSites(sites, self, self.tower, index, self.config.num_hidden_layers)
        eps = self.config.layer_norm_eps
        h = site("resid_pre", h)
        a = self.attention_cls(self.config, self.dtype, self.execution, name="self_attn")(
            layer_norm(eps, "layer_norm1", self.dtype)(h), site, mask
        )
        a = site("attn_out", a)
        h = site("resid_mid", h + a)
        m = CLIPMLP(self.config, self.dtype, name="mlp")(layer_norm(eps, "layer_norm2", self.dtype)(h), site)
        m = site("mlp_out", m)
        return site("resid_post", h + m)


class CLIPLayerCollection(nn.Module):
    """Per-layer parameters (``layers/{i}/...``, the checkpoint's layout), run as a Python loop."""

    config: EncoderConfig
    tower: str
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()
    layer_cls: type = CLIPEncoderLayer

    def setup(self):
        self.layers = [
            self.layer_cls(self.config, self.tower, self.dtype, self.execution, name=str(i))
            for i in range(self.config.num_hidden_layers)
        ]

    def __call__(self, h, sites: Sites, mask=None, start: int = 0, stop: int | None = None):
        stop = self.config.num_hidden_layers if stop is None else stop
        for i in range(start, stop):
            h = self.layers[i](h, sites, mask, i)
        return h


class CLIPEncoder(nn.Module):
    """The layer stack of a tower: per-layer parameters run as a loop, or with
    ``execution.scan_layers`` stacked parameters run as one scan (``layer_stack``)."""

    config: EncoderConfig
    tower: str
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()
    layer_cls: ClassVar[type] = CLIPEncoderLayer  # the block; BLIP-2's vision encoder overrides it

    def setup(self):
        if self.execution.scan_layers:
            c = self.config
            example = (jnp.zeros((1, 1, c.hidden_size), self.dtype), Sites(), None, 0)
            self.stacked = self.param(
                layer_stack.LAYERS, layer_stack.init_stacked(self._layer(), c.num_hidden_layers, *example))
        else:
            self.layers = CLIPLayerCollection(self.config, self.tower, self.dtype, self.execution,
                                              self.layer_cls)

    def _layer(self) -> CLIPEncoderLayer:
        # Unbound (parent=None): a template that run_stack applies to each layer's parameters.
        return self.layer_cls(self.config, self.tower, self.dtype, self.execution, parent=None)

    def __call__(self, h, sites: Sites, mask=None, start=0, stop=None):
        """Layers ``[start, stop)``; ``start``/``stop`` may be traced with ``scan_layers``."""
        n = self.config.num_hidden_layers
        stop = n if stop is None else stop
        if layer_stack.is_static(start, stop):
            if not 0 <= start <= stop <= n:
                raise ValueError(f"layer range [{start}, {stop}) is outside the {self.tower} tower's 0..{n}")
            if not self.execution.scan_layers:
                return self.layers(h, sites, mask, start, stop)
        elif not self.execution.scan_layers:
            raise ValueError(f"a traced layer range needs the {self.tower} tower's layers stacked: "
                             "build the model with Execution(scan_layers=True) and stack_layer_params")
        h, captures = layer_stack.run_stack(self._layer(), self.stacked, h, sites, start=start, stop=stop,
                                            num_layers=n, args=(mask,))
        for name, value in captures.items():
            self.sow(COLLECTION, name, value, init_fn=lambda: None, reduce_fn=lambda _, v: v)
        return h
