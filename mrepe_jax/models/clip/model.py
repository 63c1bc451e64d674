"""Flax CLIP with named sites and pure edits (DESIGN.md §2-3).

``CLIPModel.apply(variables, pixel_values, input_ids, attention_mask, edits=..., capture=...)``
returns ``(outputs, acts)``. Images are NHWC float arrays ``[batch, height, width, channels]``
(already preprocessed, see ``models.clip.preprocess``); HF's NCHW ``pixel_values`` are
``x.transpose(0, 2, 3, 1)``.

For patching sweeps every tower is exposed in three stages, so a sweep reuses the clean prefix:
``embed`` (inputs -> residual stream), ``run_layers(h, start, stop)`` and ``readout`` (residual ->
projected embedding). Call them through ``apply(..., method=...)``; see ``ContrastiveTowers``.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models import layer_stack
from mrepe_jax.models.attention import causal_mask, padding_mask
from mrepe_jax.models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.clip.layers import CLIPEncoder
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import layer_norm, normalize
from mrepe_jax.sites import SitedModel, Sites, tower_site_names


def check_pixels(pixel_values, config: CLIPVisionConfig, model: str = "model") -> None:
    """NHWC pixels of the ViT's image size and channel count, or an error naming the expected
    layout, the given shape and, for an NCHW batch (HF's layout), the transpose that fixes it."""
    shape = tuple(pixel_values.shape)
    hw, ch = tuple(config.image_hw), config.num_channels
    want = (f"expected NHWC [batch, height, width, channels] = [batch, {hw[0]}, {hw[1]}, {ch}] for "
            f"the {model}, got pixel_values of shape {shape}")
    if len(shape) != 4:
        raise ValueError(f"{want} ({len(shape)} axes, not 4)")
    if shape[1:3] == hw and shape[3] == ch:
        return
    if shape[1] == ch and shape[2:] == hw:
        raise ValueError(f"{want}: this batch looks NCHW (channels first, as HF's processors give); "
                         "pass pixel_values.transpose(0, 2, 3, 1)")
    raise ValueError(want)


def patch_matmul(pixel_values, kernel, config: CLIPVisionConfig, dtype):
    """A stride-p convolution with an HWIO ``kernel`` [p, p, C, D] as one 2-D patch matmul,
    ``[B, H, W, C] -> [B, patches, D]``: the same arithmetic, one GEMM, and a kernel gradient that
    needs no transposed copy on XLA:CPU (see clip_layers.Dense)."""
    b, _, _, ch = pixel_values.shape
    p, (gh, gw) = config.patch_size, config.grid
    patches = pixel_values.reshape(b, gh, p, gw, p, ch).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b * gh * gw, p * p * ch).astype(dtype)
    x = patches @ kernel.reshape(p * p * ch, config.hidden_size).astype(dtype)
    return x.reshape(b, gh * gw, config.hidden_size)


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        check_pixels(pixel_values, c)
        b = pixel_values.shape[0]
        p = c.patch_size
        kernel = self.param(
            "patch_embedding", nn.initializers.lecun_normal(), (p, p, c.num_channels, c.hidden_size)
        )
        x = patch_matmul(pixel_values, kernel, c, self.dtype)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (c.hidden_size,))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c.hidden_size)), x], 1)
        pos = nn.Embed(c.num_positions, c.hidden_size, dtype=self.dtype, name="position_embedding")
        return x + pos(jnp.arange(c.num_positions))[None]


class CLIPVisionTransformer(nn.Module):
    """A ViT tower; ``tower`` names its sites (``vision``, or ``audio`` for a ViT over log-mels)."""

    config: CLIPVisionConfig
    tower: str = "vision"
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        eps = self.config.layer_norm_eps
        self.embeddings = CLIPVisionEmbeddings(self.config, self.dtype)
        self.pre_layrnorm = layer_norm(eps, None, self.dtype)
        self.encoder = CLIPEncoder(self.config, self.tower, self.dtype, self.execution)
        self.post_layernorm = layer_norm(eps, None, self.dtype)

    def embed(self, pixel_values, sites: Sites):
        inputs_lib.check_batch(pixel_values, "pixel_values", self.tower)
        inputs_lib.check_finite(pixel_values, "pixel_values", self.tower)
        x = sites(self, f"{self.tower}.embed", self.embeddings(pixel_values))
        return self.pre_layrnorm(x)

    def layer_mask(self, inputs, attention_mask=None):
        """Vision tokens attend to every token: no mask."""
        return None

    def run_layers(self, h, sites: Sites, start=0, stop=None, mask=None):
        return self.encoder(h, sites, None, start, stop)

    def pool_index(self, inputs):
        """The CLS token, position 0 of every example: ``[B]``."""
        return jnp.zeros(inputs.shape[:1], jnp.int32)

    def readout(self, h, sites: Sites, inputs=None):
        """CLS token -> ``post_layernorm`` -> ``pooled`` (``inputs`` unused: the position is fixed)."""
        return sites(self, f"{self.tower}.pooled", self.post_layernorm(h[:, 0]))

    def __call__(self, pixel_values, sites: Sites = Sites()):
        h = self.run_layers(self.embed(pixel_values, sites), sites)
        return h, self.readout(h, sites)


class CLIPTextTransformer(nn.Module):
    config: CLIPTextConfig
    tower: str = "text"
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.config
        self.embeddings = CLIPTextEmbeddings(c, self.dtype)
        self.encoder = CLIPEncoder(c, self.tower, self.dtype, self.execution)
        self.final_layer_norm = layer_norm(c.layer_norm_eps, None, self.dtype)

    def embed(self, input_ids, sites: Sites):
        inputs_lib.check_ids(input_ids, self.config.vocab_size, self.tower)
        return sites(self, f"{self.tower}.embed", self.embeddings(input_ids))

    def layer_mask(self, input_ids, attention_mask=None):
        """Causal AND padding mask, ``[B, 1, T, T]`` boolean."""
        mask = causal_mask(input_ids.shape[1])
        if attention_mask is not None:
            inputs_lib.check_mask(attention_mask, input_ids, self.tower)
            mask = mask & padding_mask(attention_mask)
        return mask

    def run_layers(self, h, sites: Sites, start=0, stop=None, mask=None):
        return self.encoder(h, sites, mask, start, stop)

    def pool_index(self, input_ids):
        """CLIP's EOS pooling: argmax of ids for legacy configs (``eos_token_id == 2``, EOS is the
        largest id), else the first position holding ``eos_token_id``."""
        if self.config.eos_token_id == 2:
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax((input_ids == self.config.eos_token_id).astype(jnp.int32), axis=-1)

    def readout(self, h, sites: Sites, inputs=None):
        """``final_layer_norm`` -> EOS pooling (at a position read off the ids ``inputs``)."""
        if inputs is None:
            raise ValueError("the text tower's readout needs the input ids to find the EOS token")
        h = self.final_layer_norm(h)
        pooled = jnp.take_along_axis(h, self.pool_index(inputs)[:, None, None], axis=1)[:, 0]
        return sites(self, f"{self.tower}.pooled", pooled)

    def __call__(self, input_ids, attention_mask=None, sites: Sites = Sites()):
        mask = self.layer_mask(input_ids, attention_mask)
        h = self.run_layers(self.embed(input_ids, sites), sites, mask=mask)
        return self.final_layer_norm(h), self.readout(h, sites, inputs=input_ids)


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        c = self.config
        t = input_ids.shape[1]
        if t > c.max_position_embeddings:
            raise ValueError(
                f"input_ids have {t} tokens but the text tower has {c.max_position_embeddings} positions"
            )
        tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")
        pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype, name="position_embedding")
        return tok(inputs_lib.safe_ids(input_ids, c.vocab_size)) + pos(jnp.arange(t))[None]


class ContrastiveTowers(SitedModel):
    """Shared machinery of dual/tri-tower contrastive models: per-tower staging for sweeps.

    Subclasses define ``tower_modules() -> {tower: (encoder module, projection module)}`` and
    ``tower_layers()``. Each encoder provides ``embed(inputs, sites)``, ``layer_mask(inputs,
    attention_mask)``, ``run_layers(h, sites, start, stop, mask)`` and ``readout(h, sites, inputs)``.
    """

    def tower_modules(self) -> dict:
        raise NotImplementedError

    def check_variables(self, variables) -> None:
        execution = getattr(self, "execution", None)
        if execution is not None and isinstance(variables, Mapping) and "params" in variables:
            layer_stack.check_layout(variables["params"], execution.scan_layers)

    def site_names(self) -> tuple[str, ...]:
        return sum((tower_site_names(t, n) for t, n in self.tower_layers().items()), ())

    def _tower(self, tower: str):
        towers = self.tower_modules()
        if tower not in towers:
            raise ValueError(f"unknown tower {tower!r}; this model has {sorted(towers)}")
        return towers[tower]

    def embed(self, tower: str, inputs, sites: Sites = Sites()):
        """Inputs -> residual stream entering layer 0 (``{tower}.layers.0.resid_pre``)."""
        return self._tower(tower)[0].embed(inputs, sites)

    def layer_mask(self, tower: str, inputs, attention_mask=None, sites: Sites = Sites()):
        """The attention mask ``run_layers`` needs for these inputs (None for vision/audio)."""
        return self._tower(tower)[0].layer_mask(inputs, attention_mask)

    def run_layers(self, tower: str, h, start: int = 0, stop: int | None = None, mask=None,
                   sites: Sites = Sites()):
        """Runs layers ``[start, stop)`` of ``tower`` on residual stream ``h``."""
        return self._tower(tower)[0].run_layers(h, sites, start, stop, mask)

    def readout(self, tower: str, h, inputs=None, sites: Sites = Sites()):
        """Final residual stream -> projected (unnormalised) embedding, through ``pooled``/``proj``.
        ``inputs`` are the tower's inputs (the text tower pools at their EOS token)."""
        enc, proj = self._tower(tower)
        return sites(self, f"{tower}.proj", proj(enc.readout(h, sites, inputs=inputs)))

    def readout_index(self, tower: str, inputs, sites: Sites = Sites()):
        """``[B]``: the token position whose residual stream the readout pools (vision and audio:
        the CLS token 0; text: the EOS token, read off the ids). An edit there is what reaches the
        embedding from the last layer."""
        return self._tower(tower)[0].pool_index(inputs)

    def from_pooled(self, tower: str, pooled, sites: Sites = Sites()):
        """The tail of ``tower`` from its ``pooled`` site: edits at ``{tower}.pooled`` apply to the
        given ``pooled`` [B, D], then the projection (``{tower}.proj``). What an edit at ``pooled``
        does to the embedding, for representations already read (no encoder re-run)."""
        proj = self._tower(tower)[1]
        return sites(self, f"{tower}.proj", proj(sites(self, f"{tower}.pooled", pooled)))

    def encode(self, tower: str, inputs, attention_mask=None, sites: Sites = Sites()):
        """Projected (unnormalised) embedding of one tower's inputs."""
        mask = self.layer_mask(tower, inputs, attention_mask)
        h = self.run_layers(tower, self.embed(tower, inputs, sites), mask=mask, sites=sites)
        return self.readout(tower, h, inputs=inputs, sites=sites)


class CLIPModel(ContrastiveTowers):
    """CLIP; ``execution`` chooses how it runs (``Execution``: scanned layers, fused attention).

    Outputs match transformers' ``CLIPModel`` field for field: ``image_embeds`` / ``text_embeds``
    are L2-normalised, as there; the unnormalised projections are the ``vision.proj`` /
    ``text.proj`` sites and what ``encode`` returns.
    """

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.config
        self.vision_model = CLIPVisionTransformer(c.vision_config, "vision", self.dtype, self.execution)
        self.text_model = CLIPTextTransformer(c.text_config, "text", self.dtype, self.execution)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(c.logit_scale_init_value), ()
        )

    def tower_modules(self):
        return {
            "vision": (self.vision_model, self.visual_projection),
            "text": (self.text_model, self.text_projection),
        }

    def tower_layers(self):
        return {
            "vision": self.config.vision_config.num_hidden_layers,
            "text": self.config.text_config.num_hidden_layers,
        }

    def __call__(self, pixel_values, input_ids, attention_mask=None, sites: Sites = Sites()):
        missing = [n for n, x in (("pixel_values", pixel_values), ("input_ids", input_ids)) if x is None]
        if missing:
            raise ValueError(
                f"CLIPModel takes both towers' inputs; {' and '.join(missing)} is None. One tower "
                "alone: model.apply(variables, 'vision', pixels, method='encode') (or 'text', ids, "
                "mask), which returns (projected embedding, captures)")
        image_embeds = normalize(self.encode("vision", pixel_values, sites=sites))
        text_embeds = normalize(self.encode("text", input_ids, attention_mask, sites=sites))
        logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale)
        return {
            "image_embeds": image_embeds,
            "text_embeds": text_embeds,
            "logits_per_text": logits_per_text,
            "logits_per_image": logits_per_text.T,
        }
