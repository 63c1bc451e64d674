"""Flax CLAP with named sites and pure edits (DESIGN.md §2-3): transformers' ``ClapModel``.

``ClapModel.apply(variables, input_features, input_ids, attention_mask, is_longer, edits=...,
capture=...)`` returns ``(outputs, acts)``; the audio batch comes first, as the image batch does in
``CLIPModel`` (HF's ``forward`` takes ``input_ids`` first). ``input_features`` are
``ClapFeatureExtractor``'s ``[batch, channels, time, mel bins]``; ``is_longer`` (``[batch]`` or
``[batch, 1]`` booleans) matters only to fused models, where None means no clip is longer.

Outputs match HF's field for field:

- ``audio_embeds`` / ``text_embeds``: the projections L2-normalised (the raw projections are the
  ``audio.proj`` / ``text.proj`` sites and what ``encode`` returns);
- ``logits_per_text = text_embeds @ audio_embeds.T * exp(logit_scale_t)`` and
  ``logits_per_audio = audio_embeds @ text_embeds.T * exp(logit_scale_a)``: two learned scales, so
  the two are not transposes of each other unless the scales are equal.

``get_audio_features`` / ``get_text_features`` return the normalised projections, as HF's do (their
``pooler_output``). Each projection is ``ClapProjectionLayer``: ``linear2(act(linear1(pooled)))``.

Sites: ``text.*`` (``roberta``), ``audio.*`` (``htsat``, ``swin``), and ``audio.proj`` /
``text.proj``. For patching sweeps the towers are staged as in ``clip.ContrastiveTowers``
(``embed`` / ``run_layers`` / ``readout``); the audio tower's "layers" are its blocks counted over
every stage, run unrolled; the text tower's may be scanned (``Execution(scan_layers=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.models import layer_stack
from mrepe_jax.models.clap.config import ClapConfig
from mrepe_jax.models.clap.htsat import ClapAudioModel
from mrepe_jax.models.clap.roberta import ClapTextModel
from mrepe_jax.models.clip.model import ContrastiveTowers
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import ACT_FNS, Dense, normalize
from mrepe_jax.sites import Sites, hierarchical_site_names, tower_site_names


class ClapProjectionLayer(nn.Module):
    """``linear2(act(linear1(x)))``, both Linears ``projection_dim`` wide."""

    projection_dim: int
    act: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ACT_FNS[self.act](Dense(self.projection_dim, dtype=self.dtype, name="linear1")(x))
        return Dense(self.projection_dim, dtype=self.dtype, name="linear2")(x)


class ClapModel(ContrastiveTowers):
    """CLAP; ``execution`` chooses how the text tower runs (scanned layers, fused attention); the
    audio tower always runs its blocks unrolled with explicit window attention."""

    config: ClapConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.config
        self.text_model = ClapTextModel(c.text_config, "text", self.dtype, self.execution)
        self.text_projection = ClapProjectionLayer(c.projection_dim, c.projection_hidden_act, self.dtype)
        self.audio_model = ClapAudioModel(c.audio_config, "audio", self.dtype)
        self.audio_projection = ClapProjectionLayer(c.projection_dim, c.projection_hidden_act, self.dtype)
        init = nn.initializers.constant(math.log(c.logit_scale_init_value))
        self.logit_scale_a = self.param("logit_scale_a", init, ())
        self.logit_scale_t = self.param("logit_scale_t", init, ())

    def tower_modules(self):
        return {"audio": (self.audio_model, self.audio_projection),
                "text": (self.text_model, self.text_projection)}

    def tower_layers(self):
        """``{tower: layers}``; the audio tower's are its blocks over every stage."""
        return {"audio": self.config.audio_config.num_blocks,
                "text": self.config.text_config.num_hidden_layers}

    def scans(self, tower: str) -> bool:
        """Whether ``tower`` can run as one scanned stack (a patching sweep's traced layer): the
        text tower can; the audio tower's blocks change shape between stages, so never."""
        return tower != "audio"

    def pools_mean(self, tower: str) -> bool:
        """The audio tower pools the mean of its final tokens (HTSAT's avgpool), not one token."""
        return tower == "audio"

    @staticmethod
    def stack_params(params) -> dict:
        """Per-layer params -> the layout of ``Execution(scan_layers=True)``: the text tower's
        layers stacked; the audio stages (also ``layers/{s}``) never are."""
        return {**params, "text_model": layer_stack.stack_layer_params(params["text_model"])}

    def site_names(self) -> tuple[str, ...]:
        return (hierarchical_site_names("audio", self.config.audio_config.depths)
                + tower_site_names("text", self.config.text_config.num_hidden_layers))

    def check_variables(self, variables) -> None:
        # Only the text tower's layers stack: the audio stages (also ``layers/{s}``) never do.
        if isinstance(variables, Mapping) and "text_model" in variables.get("params", {}):
            layer_stack.check_layout(variables["params"]["text_model"], self.execution.scan_layers,
                                     "params/text_model")

    def embed(self, tower: str, inputs, sites: Sites = Sites(), is_longer=None):
        """Inputs -> the stream entering the tower's first layer/block. ``is_longer``: audio only."""
        if tower == "audio":
            return self.audio_model.embed(inputs, sites, is_longer)
        return super().embed(tower, inputs, sites)

    def encode(self, tower: str, inputs, attention_mask=None, sites: Sites = Sites(), is_longer=None):
        """Projected (unnormalised) embedding of one tower's inputs (site ``{tower}.proj``)."""
        mask = self.layer_mask(tower, inputs, attention_mask)
        h = self.run_layers(tower, self.embed(tower, inputs, sites, is_longer), mask=mask, sites=sites)
        return self.readout(tower, h, inputs=inputs, sites=sites)

    def get_audio_features(self, input_features, is_longer=None, sites: Sites = Sites()):
        """HF's ``get_audio_features(...).pooler_output``: the normalised audio projection."""
        return normalize(self.encode("audio", input_features, sites=sites, is_longer=is_longer))

    def get_text_features(self, input_ids, attention_mask=None, sites: Sites = Sites()):
        """HF's ``get_text_features(...).pooler_output``: the normalised text projection."""
        return normalize(self.encode("text", input_ids, attention_mask, sites=sites))

    def __call__(self, input_features, input_ids, attention_mask=None, is_longer=None,
                 sites: Sites = Sites()):
        missing = [n for n, x in (("input_features", input_features), ("input_ids", input_ids)) if x is None]
        if missing:
            raise ValueError(
                f"ClapModel takes both towers' inputs; {' and '.join(missing)} is None. One tower "
                "alone: model.apply(variables, 'audio', features, method='encode', is_longer=...) (or "
                "'text', ids, mask), which returns (projected embedding, captures)")
        audio = self.get_audio_features(input_features, is_longer, sites)
        text = self.get_text_features(input_ids, attention_mask, sites)
        return {
            "audio_embeds": audio,
            "text_embeds": text,
            "logits_per_audio": audio @ text.T * jnp.exp(self.logit_scale_a),
            "logits_per_text": text @ audio.T * jnp.exp(self.logit_scale_t),
        }
