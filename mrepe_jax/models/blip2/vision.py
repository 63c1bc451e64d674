"""BLIP-2's vision tower (an EVA-style ViT) in Linen, mirroring transformers' ``Blip2VisionModel``.

Parameter paths mirror the HF state-dict keys of ``Blip2VisionModel`` (inside
``Blip2ForConditionalGeneration`` they sit under ``vision_model.``):

====================================================  ==============================================
Flax path                                              HF key
====================================================  ==============================================
``embeddings/patch_embedding/kernel`` [p, p, 3, D]    ``embeddings.patch_embedding.weight`` [D, 3, p, p]
``embeddings/patch_embedding/bias``                   ``embeddings.patch_embedding.bias``
``embeddings/class_embedding`` [1, 1, D]              ``embeddings.class_embedding`` (same shape)
``embeddings/position_embedding`` [1, T, D]           ``embeddings.position_embedding`` (same shape)
``encoder/layers/{i}/self_attn/qkv/kernel|bias``       ``encoder.layers.{i}.self_attn.qkv.weight|bias``
``encoder/layers/{i}/self_attn/projection/...``        ``encoder.layers.{i}.self_attn.projection.*``
``encoder/layers/{i}/layer_norm{1,2}/scale|bias``      ``encoder.layers.{i}.layer_norm{1,2}.weight|bias``
``encoder/layers/{i}/mlp/fc{1,2}/kernel|bias``         ``encoder.layers.{i}.mlp.fc{1,2}.weight|bias``
``post_layernorm/scale|bias``                          ``post_layernorm.weight|bias``
====================================================  ==============================================

What differs from CLIP's ViT (``clip.CLIPVisionTransformer``), checked against transformers 5.24:

- One packed ``qkv`` Linear, ``[q | k | v]`` along its output. Its bias is ONE ``[3D]`` parameter:
  ``Blip2Attention.__init__`` builds ``q_bias``/``v_bias`` as *local* tensors and registers only
  ``qkv.bias = cat(q_bias, zeros, v_bias)``, so state dicts hold ``qkv.bias`` (no ``q_bias`` /
  ``v_bias`` keys) and its middle third -- the key bias, zero in released checkpoints -- is an
  ordinary trainable parameter that the forward pass uses. We keep the whole ``[3D]`` vector.
  ``qkv_bias=False`` means no bias at all. The output projection is called ``projection``.
- The patch convolution has a bias; class and position embeddings are raw ``[1, ., D]`` parameters.
- No pre-LayerNorm. ``post_layernorm`` is applied to the WHOLE last hidden state (that is
  ``last_hidden_state``, what the Q-Former cross-attends to); ``pooler_output`` then applies
  ``post_layernorm`` a SECOND time to the CLS row of that normalised state, as HF does.
- Exact (erf) GELU by default (``hidden_act="gelu"``), LayerNorm eps 1e-6.

Sites (tower ``vision``, DESIGN.md §3): ``vision.embed`` (patch + class + position embeddings, the
input of layer 0), every ``vision.layers.{i}.{point}`` of ``sites.LAYER_POINTS`` (pre-LN blocks,
so the points mean exactly what they mean in CLIP: ``resid_mid = x + attn_out``,
``resid_post = resid_mid + mlp_out``) and ``vision.pooled`` (HF's ``pooler_output``, ``[B, D]``).
There is no ``vision.proj``: BLIP-2's vision tower has no projection. Inputs are NHWC pixels
(HF's NCHW ``pixel_values`` are ``x.transpose(0, 2, 3, 1)``); position-embedding interpolation to
other image sizes is not supported (the image size must equal the config's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.attention import self_attention
from mrepe_jax.models.clip import CLIPVisionConfig
from mrepe_jax.models.clip.layers import CLIPEncoder, CLIPEncoderLayer
from mrepe_jax.models.clip.model import check_pixels, patch_matmul
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import Dense, layer_norm
from mrepe_jax.sites import LayerSites, SitedModel, Sites, tower_site_names


@dataclasses.dataclass(frozen=True)
class Blip2VisionConfig(CLIPVisionConfig):
    """transformers' ``Blip2VisionConfig`` (defaults: ViT-g/14 of ``Salesforce/blip2-opt-2.7b``).

    It is CLIP's ViT config plus ``qkv_bias``; ``hidden_size % num_attention_heads`` and
    ``hidden_act`` are validated by ``EncoderConfig``. HF's patch convolution always takes 3
    channels, so ``num_channels`` stays 3.
    """

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int | tuple[int, int] = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.num_channels != 3:
            raise ValueError(f"Blip2VisionConfig.num_channels must be 3 (HF's patch convolution "
                             f"takes RGB), got {self.num_channels}")
        self.grid  # noqa: B018  (raises when the image size is not a multiple of the patch size)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Blip2VisionConfig:
        """From a transformers ``Blip2VisionConfig.to_dict()`` (or a ``config.json``'s
        ``vision_config``); keys this model does not use (dropout, initializer_range) are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("image_size", "patch_size"):
            if isinstance(kwargs.get(key), (list, tuple)):
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("patch_size"), tuple):
            p = kwargs["patch_size"]
            if len(set(p)) != 1:
                raise ValueError(f"Blip2VisionConfig.patch_size {p} is not square")
            kwargs["patch_size"] = p[0]
        return cls(**kwargs)


def vision_site_names(config: Blip2VisionConfig, tower: str = "vision") -> tuple[str, ...]:
    """Every site of the BLIP-2 vision tower, in forward order (no ``proj``)."""
    return tuple(n for n in tower_site_names(tower, config.num_hidden_layers) if n != f"{tower}.proj")


class Blip2PatchEmbedding(nn.Module):
    """HF's ``Conv2d(3, D, kernel=p, stride=p)`` with bias, as one patch matmul (the same
    arithmetic as CLIP's bias-free one, ``clip.CLIPVisionEmbeddings``)."""

    config: Blip2VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        p = c.patch_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c.num_channels, c.hidden_size))
        bias = self.param("bias", nn.initializers.zeros_init(), (c.hidden_size,))
        return patch_matmul(pixel_values, kernel, c, self.dtype) + bias.astype(self.dtype)


class Blip2VisionEmbeddings(nn.Module):
    """``Blip2VisionEmbeddings``: ``[CLS; patches] + position_embedding``."""

    config: Blip2VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        check_pixels(pixel_values, c, "BLIP-2 vision tower")
        b = pixel_values.shape[0]
        x = Blip2PatchEmbedding(c, self.dtype, name="patch_embedding")(pixel_values)
        d = c.hidden_size
        cls = self.param("class_embedding", nn.initializers.truncated_normal(0.02), (1, 1, d))
        pos = self.param("position_embedding", nn.initializers.truncated_normal(0.02),
                         (1, c.num_positions, d))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], 1)
        return x + pos.astype(self.dtype)


class Blip2Attention(nn.Module):
    """``Blip2Attention``: packed ``qkv`` projection (one ``[3D]`` bias, see the module docstring),
    softmax attention without mask, output ``projection``."""

    config: Blip2VisionConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, site: LayerSites, mask=None):
        c = self.config
        d = c.hidden_size
        site = site.bind(self)
        # HF reshapes to [B, T, 3, H, Dh]: q, k and v are the three consecutive D-wide thirds.
        qkv = Dense(3 * d, use_bias=c.qkv_bias, dtype=self.dtype, name="qkv")(x)
        z = self_attention(site, qkv, c.num_attention_heads, mask, self.execution)
        return Dense(d, dtype=self.dtype, name="projection")(z)


class Blip2EncoderLayer(CLIPEncoderLayer):
    """``Blip2EncoderLayer``: CLIP's pre-LN block (same parameter names, sites and ``Blip2MLP`` =
    ``CLIPMLP`` arithmetic) with BLIP-2's packed-``qkv`` attention."""

    attention_cls: ClassVar[type] = Blip2Attention


class Blip2VisionEncoder(CLIPEncoder):
    """``Blip2Encoder``: CLIP's layer stack (unrolled, or scanned with ``Execution.scan_layers``
    over stacked params, ``layer_stack``) with BLIP-2 blocks."""

    layer_cls: ClassVar[type] = Blip2EncoderLayer


class Blip2VisionModel(SitedModel):
    """transformers' ``Blip2VisionModel``; ``apply(variables, pixels_nhwc, edits=, capture=)`` returns
    ``({"last_hidden_state" [B, T, D], "pooler_output" [B, D]}, acts)``.

    As a submodule of a larger model (named ``vision_model``), call it with ``sites=``; the stages
    ``embed`` / ``run_layers`` / ``readout`` serve patching sweeps as in ``clip.ContrastiveTowers``.
    """

    config: Blip2VisionConfig
    tower: str = "vision"
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        self.embeddings = Blip2VisionEmbeddings(self.config, self.dtype)
        self.encoder = Blip2VisionEncoder(self.config, self.tower, self.dtype, self.execution)
        self.post_layernorm = layer_norm(self.config.layer_norm_eps, None, self.dtype)

    def tower_layers(self) -> dict[str, int]:
        return {self.tower: self.config.num_hidden_layers}

    def site_names(self) -> tuple[str, ...]:
        return vision_site_names(self.config, self.tower)

    def embed(self, pixel_values, sites: Sites = Sites()):
        """NHWC pixels -> the residual stream entering layer 0 (site ``vision.embed``)."""
        inputs_lib.check_batch(pixel_values, "pixel_values", self.tower)
        inputs_lib.check_finite(pixel_values, "pixel_values", self.tower)
        return sites(self, f"{self.tower}.embed", self.embeddings(pixel_values))

    def run_layers(self, h, sites: Sites = Sites(), start=0, stop=None, mask=None):
        """Layers ``[start, stop)`` (traced bounds need ``Execution(scan_layers=True)``)."""
        return self.encoder(h, sites, None, start, stop)

    def readout(self, h, sites: Sites = Sites()):
        """Final residual -> (``last_hidden_state`` = post_layernorm over every token,
        ``pooler_output`` = post_layernorm again on its CLS row, site ``vision.pooled``)."""
        last = self.post_layernorm(h)
        pooled = sites(self, f"{self.tower}.pooled", self.post_layernorm(last[:, 0]))
        return last, pooled

    def __call__(self, pixel_values, sites: Sites = Sites()):
        last, pooled = self.readout(self.run_layers(self.embed(pixel_values, sites), sites), sites)
        return {"last_hidden_state": last, "pooler_output": pooled}
