"""CLAP's RoBERTa text tower in Linen, mirroring transformers' ``ClapTextModel`` (5.24), with named
sites (tower ``text``).

RoBERTa is a post-LN BERT encoder:

- Embeddings: ``LayerNorm(word + token_type + position)``. Token types are all 0 (``ClapModel``
  passes none, so HF gathers its all-zero buffer). Positions count the non-padding tokens from
  ``pad_token_id + 1`` (fairseq's ``make_positions``); padding tokens sit at ``pad_token_id``.
  A position past ``max_position_embeddings`` is an error here, not a silent wrap.
- Each layer: ``resid_mid = attention.output.LayerNorm(x + attention.output.dense(self_attn(x)))``,
  ``resid_post = output.LayerNorm(resid_mid + output.dense(act(intermediate.dense(resid_mid))))``;
  padding keys are masked (``attention_mask``), every query attends (no causal mask).
- Pooler: ``tanh(pooler.dense(h[:, 0]))``, the ``<s>`` token; that is ``pooler_output``, which
  ``ClapModel`` projects.

Flax paths under ``text_model`` are HF's keys, except one renamed component: HF's
``encoder.layer.{i}`` is ``encoder/layers/{i}`` here, so that ``Execution(scan_layers=True)``
stacks them like every other tower's (``layer_stack``); ``convert`` renames the keys both ways.

Sites, for layer ``i`` with input ``x`` (as the BLIP-2 Q-Former's, the other post-LN tower):
``text.embed`` (the embeddings' LayerNorm output, the input of layer 0), ``resid_pre`` = ``x``,
``attn.*`` (``models.attention``), ``attn_out`` (``attention.output.dense``, before the residual
add), ``resid_mid`` (the normalised sum), ``mlp.hidden`` ``[B, T, intermediate]``, ``mlp_out``
(``output.dense``, before the add), ``resid_post`` (normalised: HF's ``hidden_states[i + 1]``),
and ``text.pooled``. Since the blocks are post-LN, an edit at ``attn_out`` / ``mlp_out`` passes
through a LayerNorm before it reaches the stream.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models import layer_stack
from mrepe_jax.models.attention import padding_mask, self_attention
from mrepe_jax.models.clap.config import ClapTextConfig
from mrepe_jax.models.clip.layers import CLIPEncoder
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import Dense, DenseAddNorm, DenseParams, Intermediate, layer_norm
from mrepe_jax.sites import LayerSites, SitedModel, Sites, tower_site_names


def position_ids(input_ids, pad_token_id: int):
    """RoBERTa's positions: ``pad + cumulative count`` of non-padding tokens, ``pad`` on padding."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


class RobertaEmbeddings(nn.Module):
    config: ClapTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        c = self.config
        t = input_ids.shape[1]
        if t + c.pad_token_id >= c.max_position_embeddings:
            raise ValueError(f"input_ids have {t} tokens but the text tower's positions start at "
                             f"{c.pad_token_id + 1} and end at {c.max_position_embeddings - 1}: at most "
                             f"{c.max_position_embeddings - c.pad_token_id - 1} tokens")
        embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype, name=name)  # noqa: E731
        x = embed(c.vocab_size, "word_embeddings")(inputs_lib.safe_ids(input_ids, c.vocab_size))
        x = x + embed(c.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(input_ids))
        x = x + embed(c.max_position_embeddings, "position_embeddings")(position_ids(input_ids, c.pad_token_id))
        return layer_norm(c.layer_norm_eps, "LayerNorm", self.dtype)(x)


class RobertaSelfAttention(nn.Module):
    """``query``/``key``/``value`` (run as one packed matmul) and softmax attention; returns the
    merged heads ``[B, T, D]`` (the output projection is ``attention/output/dense``)."""

    config: ClapTextConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, site: LayerSites, mask=None):
        d = self.config.hidden_size
        kernels, biases = zip(*(DenseParams(d, self.dtype, name=n)(d) for n in ("query", "key", "value")))
        qkv = x.astype(self.dtype).reshape(-1, d) @ jnp.concatenate(kernels, 1) + jnp.concatenate(biases)
        qkv = qkv.reshape(x.shape[:-1] + (3 * d,))
        return self_attention(site.bind(self), qkv, self.config.num_attention_heads, mask, self.execution)


class RobertaAttention(nn.Module):
    config: ClapTextConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, h, site: LayerSites, mask=None):
        z = RobertaSelfAttention(self.config, self.dtype, self.execution, name="self")(h, site, mask)
        out = DenseAddNorm(self.config.hidden_size, self.config.layer_norm_eps, self.dtype, name="output")
        return out(z, h, site, "attn_out", "resid_mid")


class RobertaLayer(nn.Module):
    """One post-LN layer; ``index`` is an int, or traced inside a scanned stack."""

    config: ClapTextConfig
    tower: str = "text"
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, h, sites: Sites, mask, index):
        c = self.config
        site = LayerSites(sites, self, self.tower, index, c.num_hidden_layers)
        h = site("resid_pre", h)
        h = RobertaAttention(c, self.dtype, self.execution, name="attention")(h, site, mask)
        m = Intermediate(c.intermediate_size, c.hidden_act, self.dtype, name="intermediate")(h, site)
        out = DenseAddNorm(c.hidden_size, c.layer_norm_eps, self.dtype, name="output")
        return out(m, h, site, "mlp_out", "resid_post")


class RobertaEncoder(CLIPEncoder):
    """The layer stack ``encoder/layers/{i}`` (or stacked, ``Execution.scan_layers``): CLIP's
    machinery with RoBERTa layers."""

    layer_cls: ClassVar[type] = RobertaLayer


class RobertaPooler(nn.Module):
    config: ClapTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        return jnp.tanh(Dense(self.config.hidden_size, dtype=self.dtype, name="dense")(h[:, 0]))


class ClapTextModel(SitedModel):
    """transformers' ``ClapTextModel``; ``apply(variables, input_ids, attention_mask, edits=,
    capture=)`` returns ``({"last_hidden_state", "pooler_output"}, acts)``. As ``text_model`` of
    ``ClapModel`` it is called with ``sites=`` and through its stages ``embed`` / ``layer_mask`` /
    ``run_layers`` / ``readout`` (traced layer ranges need ``Execution(scan_layers=True)``)."""

    config: ClapTextConfig
    tower: str = "text"
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        self.embeddings = RobertaEmbeddings(self.config, self.dtype)
        self.encoder = RobertaEncoder(self.config, self.tower, self.dtype, self.execution)
        self.pooler = RobertaPooler(self.config, self.dtype)

    def tower_layers(self) -> dict[str, int]:
        return {self.tower: self.config.num_hidden_layers}

    def site_names(self) -> tuple[str, ...]:
        """Every site but ``proj`` (a projection belongs to ``ClapModel``)."""
        return tuple(n for n in tower_site_names(self.tower, self.config.num_hidden_layers)
                     if n != f"{self.tower}.proj")

    def check_variables(self, variables) -> None:
        if "params" in variables:
            layer_stack.check_layout(variables["params"], self.execution.scan_layers)

    def embed(self, input_ids, sites: Sites = Sites()):
        inputs_lib.check_ids(input_ids, self.config.vocab_size, self.tower)
        return sites(self, f"{self.tower}.embed", self.embeddings(input_ids))

    def layer_mask(self, input_ids, attention_mask=None):
        """The padding key mask ``[B, 1, 1, T]`` (None without ``attention_mask``: all attend)."""
        if attention_mask is None:
            return None
        inputs_lib.check_mask(attention_mask, input_ids, self.tower)
        return padding_mask(attention_mask)

    def run_layers(self, h, sites: Sites = Sites(), start=0, stop=None, mask=None):
        return self.encoder(h, sites, mask, start, stop)

    def pool_index(self, input_ids):
        """The pooler reads the first token (``<s>``) of every example: ``[B]`` zeros."""
        return jnp.zeros(input_ids.shape[:1], jnp.int32)

    def readout(self, h, sites: Sites = Sites(), inputs=None):
        """Final hidden states -> ``pooler_output`` (site ``text.pooled``)."""
        return sites(self, f"{self.tower}.pooled", self.pooler(h))

    def __call__(self, input_ids, attention_mask=None, sites: Sites = Sites()):
        h = self.run_layers(self.embed(input_ids, sites), sites, mask=self.layer_mask(input_ids, attention_mask))
        return {"last_hidden_state": h, "pooler_output": self.readout(h, sites)}
