"""CLIP's pre-LayerNorm transformer encoder in Linen, with module names mirroring HF keys.

``encoder/layers/3/self_attn/q_proj/kernel`` here is ``encoder.layers.3.self_attn.q_proj.weight``
(transposed) in a transformers checkpoint, so the conversion table stays a readable list.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.models import layer_stack
from mrepe_jax.models.attention import self_attention
from mrepe_jax.models.clip.config import EncoderConfig
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import ACT_FNS, Dense, DenseParams, layer_norm
from mrepe_jax.sites import COLLECTION, LayerSites, Sites

QKV = ("q_proj", "k_proj", "v_proj")


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
