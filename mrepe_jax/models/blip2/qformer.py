"""BLIP-2's Q-Former in Linen, mirroring transformers' ``Blip2QFormerModel`` (query-only path).

The Q-Former is a post-LN BERT encoder over the ``num_query_tokens`` learned queries. Every layer
self-attends over the queries; layers with ``index % cross_attention_frequency == 0`` then
cross-attend to the image embeddings (the vision tower's post-LN ``last_hidden_state``, width
``encoder_hidden_size``); an MLP (``intermediate_query`` / ``output_query``, the weights HF uses for
query tokens) ends the layer. Each sub-block is BERT's ``LayerNorm(x + dropout(dense(.)))``.

Where ``query_tokens`` lives: in the composite model, as in transformers (``query_tokens`` is a
parameter of ``Blip2ForConditionalGeneration``/``Blip2Model``, checkpoint key ``query_tokens``, not
of ``Blip2QFormerModel``). This module takes ``query_embeds`` ``[B, Nq, D]`` exactly as
``Blip2QFormerModel.forward(query_embeds=...)`` does; the composite broadcasts its ``query_tokens``
``[1, Nq, D]`` over the batch and passes them in (``parts_convert.QUERY_TOKENS_RULE``).

Text input: in transformers 5.24 ``Blip2QFormerModel`` has no text embeddings, and
``Blip2ForConditionalGeneration`` (BLIP-2 OPT / Flan-T5) calls it with queries only. Text tokens
are only fed by ``Blip2ForImageTextRetrieval`` / ``Blip2TextModelWithProjection`` (configs with
``use_qformer_text_input=True``, which adds a text-token MLP ``intermediate``/``output`` per layer).
This module implements the query-only path; those text-MLP weights are never used by it and are
skipped at conversion (``parts_convert.qformer_ignored``). Inference only: dropout is off.

Sites (tower ``qformer``, DESIGN.md §3), for layer ``i`` with input ``x``:

=================  ==============================================================================
``embed``          ``layernorm(query_embeds)``: the input of layer 0 (HF's ``embedding_output``)
``resid_pre``      ``x``, the layer input
``attn.*``         self-attention ``q k v [B,Nq,H,Dh]``, ``logits`` (raw ``Q K^T`` before the
                   ``1/sqrt(d)`` scaling and any mask: eq 7 adds there), ``pattern``, ``z``
``attn_out``       ``attention.output.dense(z)``: the attention output BEFORE the residual add
``resid_mid``      ``attention.output.LayerNorm(x + attn_out)``
``xattn.*``        cross-attention (only on layers that have it): ``q`` from ``resid_mid``,
                   ``k``/``v`` ``[B, T_img, H, Dh]`` from the image embeddings, ``logits`` /
                   ``pattern`` ``[B, H, Nq, T_img]``, ``z``
``xattn_out``      ``crossattention.output.dense(z)``, before the residual add
``resid_xmid``     ``crossattention.output.LayerNorm(resid_mid + xattn_out)``
``mlp.hidden``     ``act(intermediate_query.dense(h))`` ``[B, Nq, intermediate_size]``, where ``h``
                   is ``resid_xmid`` on cross-attention layers and ``resid_mid`` elsewhere
``mlp_out``        ``output_query.dense(mlp.hidden)``, before the residual add
``resid_post``     ``output_query.LayerNorm(h + mlp_out)``: the layer output (HF hidden_states[i+1])
=================  ==============================================================================

Because the blocks are post-LN, an edit at ``attn_out`` / ``xattn_out`` / ``mlp_out`` passes
through the block's LayerNorm, and ``resid_mid`` / ``resid_xmid`` / ``resid_post`` are normalised
states (not a running sum as in pre-LN towers). The layers always run unrolled: they are not all
alike (cross-attention every ``cross_attention_frequency`` layers), so ``Execution.scan_layers``
does not stack them (``layer_stack.stack_layer_params`` only stacks ``layers`` subtrees; these are
``encoder/layer/{i}``, HF's name, and are left as they are).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.attention import dot_product_attention, padding_mask, split_heads, use_fused
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import ACT_FNS, Dense, DenseAddNorm, Intermediate, layer_norm
from mrepe_jax.sites import XATTN_POINTS, LayerSites, SitedModel, Sites, layer_site, tower_site_names

TOWER = "qformer"


@dataclasses.dataclass(frozen=True)
class Blip2QFormerConfig:
    """transformers' ``Blip2QFormerConfig`` (defaults: ``Salesforce/blip2-opt-2.7b``), the fields
    the query-only forward uses. ``encoder_hidden_size`` is the width of the image embeddings the
    cross-attention reads (the vision tower's ``hidden_size``; see ``check_composable``)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    use_qformer_text_input: bool = False

    def __post_init__(self):
        if self.hidden_act not in ACT_FNS:
            raise ValueError(f"Blip2QFormerConfig.hidden_act {self.hidden_act!r} is not one of "
                             f"{sorted(ACT_FNS)}")
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"Blip2QFormerConfig.hidden_size {self.hidden_size} is not divisible by "
                             f"Blip2QFormerConfig.num_attention_heads {self.num_attention_heads}")
        if self.cross_attention_frequency < 1:
            raise ValueError("Blip2QFormerConfig.cross_attention_frequency must be >= 1, got "
                             f"{self.cross_attention_frequency}")

    def has_cross_attention(self, layer: int) -> bool:
        """HF's rule: ``layer_idx % cross_attention_frequency == 0``."""
        return layer % self.cross_attention_frequency == 0

    @property
    def cross_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if self.has_cross_attention(i))

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Blip2QFormerConfig:
        """From a transformers ``Blip2QFormerConfig.to_dict()`` (or a ``config.json``'s
        ``qformer_config``); keys this model does not use (dropout, vocab, ...) are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_composable(vision_config, qformer_config: Blip2QFormerConfig) -> None:
    """Raises when a Q-Former cannot read this vision tower's output: its cross-attention keys and
    values take ``encoder_hidden_size``-wide inputs, which must be the vision ``hidden_size``."""
    if qformer_config.encoder_hidden_size != vision_config.hidden_size:
        raise ValueError(
            f"Blip2QFormerConfig.encoder_hidden_size {qformer_config.encoder_hidden_size} does not "
            f"match the vision tower's Blip2VisionConfig.hidden_size {vision_config.hidden_size}: "
            "the Q-Former cross-attends to the vision tower's last hidden state"
        )


def qformer_site_names(config: Blip2QFormerConfig) -> tuple[str, ...]:
    """Every Q-Former site in forward order: ``sites.tower_site_names(..., cross_attention=True)``
    lists ``xattn.*`` on every layer, so those of layers without cross-attention are dropped here,
    as are ``pooled`` / ``proj`` (the Q-Former has neither; its output is ``[B, Nq, D]``)."""
    drop = {layer_site(TOWER, i, p) for i in range(config.num_hidden_layers)
            if not config.has_cross_attention(i) for p in XATTN_POINTS}
    drop |= {f"{TOWER}.pooled", f"{TOWER}.proj"}
    names = tower_site_names(TOWER, config.num_hidden_layers, cross_attention=True)
    return tuple(n for n in names if n not in drop)


def _no_site(point, x):
    return x


class QFormerMultiHeadAttention(nn.Module):
    """``Blip2QFormerMultiHeadAttention``: ``query``/``key``/``value`` Linears (key/value read
    ``encoder_hidden_size``-wide image embeddings when ``cross``), scaled softmax attention; returns
    the merged heads ``z`` ``[B, Tq, D]`` (no output projection: that is ``output.dense``)."""

    config: Blip2QFormerConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, x, site: LayerSites, block: str, kv=None, mask=None):
        c = self.config
        d, heads = c.hidden_size, c.num_attention_heads
        src = x if kv is None else kv
        q, k, v = (split_heads(Dense(d, dtype=self.dtype, name=n)(t), heads)
                   for n, t in (("query", x), ("key", src), ("value", src)))
        if site.touches(block):
            z = dot_product_attention(site.bind(self), block, q, k, v, mask)
        elif use_fused(self.execution):
            z = jax.nn.dot_product_attention(q, k, v, mask=mask)
        else:
            z = dot_product_attention(_no_site, block, q, k, v, mask)
        return z.reshape(x.shape[:-1] + (d,))


class QFormerAttention(nn.Module):
    """``Blip2QFormerAttention``: ``attention`` (multi-head) then ``output`` (dense + add + LN).
    ``block`` is ``attn`` (self-attention) or ``xattn`` (cross-attention to ``kv``)."""

    config: Blip2QFormerConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, h, site: LayerSites, block: str, kv=None, mask=None):
        z = QFormerMultiHeadAttention(self.config, self.dtype, self.execution, name="attention")(
            h, site, block, kv, mask)
        resid = "resid_mid" if block == "attn" else "resid_xmid"
        out = DenseAddNorm(self.config.hidden_size, self.config.layer_norm_eps, self.dtype, name="output")
        return out(z, h, site, f"{block}_out", resid)


class QFormerLayer(nn.Module):
    """``Blip2QFormerLayer`` on query tokens only (``query_length == Nq``): self-attention block,
    cross-attention block when ``config.has_cross_attention(index)``, then the query MLP."""

    config: Blip2QFormerConfig
    index: int
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    @nn.compact
    def __call__(self, h, image_embeds, image_mask, sites: Sites):
        c = self.config
        site = LayerSites(sites, self, TOWER, self.index, c.num_hidden_layers)
        h = site("resid_pre", h)
        h = QFormerAttention(c, self.dtype, self.execution, name="attention")(h, site, "attn")
        if c.has_cross_attention(self.index):
            h = QFormerAttention(c, self.dtype, self.execution, name="crossattention")(
                h, site, "xattn", image_embeds, image_mask)
        m = Intermediate(c.intermediate_size, c.hidden_act, self.dtype, name="intermediate_query")(h, site)
        out = DenseAddNorm(c.hidden_size, c.layer_norm_eps, self.dtype, name="output_query")
        return out(m, h, site, "mlp_out", "resid_post")


class QFormerLayerCollection(nn.Module):
    """The per-layer modules ``{i}``; a module of its own so that the path is ``encoder/layer/{i}``
    (a list attribute with named members adds no path component)."""

    config: Blip2QFormerConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        self.layers = [QFormerLayer(self.config, i, self.dtype, self.execution, name=str(i))
                       for i in range(self.config.num_hidden_layers)]

    def __call__(self, h, image_embeds, image_mask, sites: Sites, start: int, stop: int):
        for i in range(start, stop):
            h = self.layers[i](h, image_embeds, image_mask, sites)
        return h


class QFormerEncoder(nn.Module):
    """``Blip2QFormerEncoder``: the layers ``encoder/layer/{i}`` (HF's singular ``layer``)."""

    config: Blip2QFormerConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        self.layer = QFormerLayerCollection(self.config, self.dtype, self.execution)

    def __call__(self, h, image_embeds, image_mask, sites: Sites, start: int = 0, stop: int | None = None):
        n = self.config.num_hidden_layers
        stop = n if stop is None else stop
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise TypeError("the Q-Former's layers run unrolled: start/stop must be Python ints, got "
                            f"{type(start).__name__} and {type(stop).__name__}")
        if not 0 <= start <= stop <= n:
            raise ValueError(f"layer range [{start}, {stop}) is outside the Q-Former's 0..{n}")
        return self.layer(h, image_embeds, image_mask, sites, int(start), int(stop))


class Blip2QFormerModel(SitedModel):
    """transformers' ``Blip2QFormerModel`` (query-only). ``apply(variables, query_embeds [B, Nq, D],
    image_embeds [B, T_img, encoder_hidden_size], image_attention_mask [B, T_img] or None,
    edits=, capture=)`` returns ``({"last_hidden_state" [B, Nq, D], "pooler_output" [B, D]}, acts)``;
    ``pooler_output`` is HF's (the first query's state) and has no site.

    The stages ``embed`` / ``run_layers`` serve patching sweeps (a static layer range)."""

    config: Blip2QFormerConfig
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        self.layernorm = layer_norm(self.config.layer_norm_eps, None, self.dtype)
        self.encoder = QFormerEncoder(self.config, self.dtype, self.execution)

    def tower_layers(self) -> dict[str, int]:
        return {TOWER: self.config.num_hidden_layers}

    def site_names(self) -> tuple[str, ...]:
        return qformer_site_names(self.config)

    def embed(self, query_embeds, sites: Sites = Sites()):
        """Query embeddings -> ``layernorm`` (dropout is off) -> site ``qformer.embed``."""
        c = self.config
        inputs_lib.check_batch(query_embeds, "query_embeds", TOWER)
        if query_embeds.ndim != 3 or query_embeds.shape[-1] != c.hidden_size:
            raise ValueError(f"query_embeds of shape {tuple(query_embeds.shape)} given to the Q-Former "
                             f"must be [batch, queries, hidden_size={c.hidden_size}]")
        return sites(self, f"{TOWER}.embed", self.layernorm(query_embeds.astype(self.dtype)))

    def image_mask(self, image_embeds, image_attention_mask=None):
        """Checks the image embeddings and turns a ``[B, T_img]`` 1/0 mask into the cross-attention's
        boolean ``[B, 1, 1, T_img]`` key mask (None: every image token is attended to)."""
        c = self.config
        if image_embeds.ndim != 3 or image_embeds.shape[-1] != c.encoder_hidden_size:
            raise ValueError(
                f"image_embeds of shape {tuple(image_embeds.shape)} given to the Q-Former must be "
                f"[batch, image tokens, Blip2QFormerConfig.encoder_hidden_size={c.encoder_hidden_size}]")
        if image_attention_mask is None:
            return None
        if tuple(image_attention_mask.shape) != tuple(image_embeds.shape[:2]):
            raise ValueError(f"image_attention_mask of shape {tuple(image_attention_mask.shape)} does not "
                             f"match image_embeds' [batch, tokens] {tuple(image_embeds.shape[:2])}")
        return padding_mask(image_attention_mask)

    def run_layers(self, h, image_embeds, image_attention_mask=None, sites: Sites = Sites(),
                   start: int = 0, stop: int | None = None):
        """Layers ``[start, stop)`` on the query stream ``h``, cross-attending to ``image_embeds``."""
        mask = self.image_mask(image_embeds, image_attention_mask)
        return self.encoder(h, image_embeds.astype(self.dtype), mask, sites, start, stop)

    def __call__(self, query_embeds, image_embeds, image_attention_mask=None, sites: Sites = Sites()):
        if query_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"query_embeds have batch {query_embeds.shape[0]} but image_embeds have "
                             f"batch {image_embeds.shape[0]} (broadcast the query tokens first)")
        h = self.run_layers(self.embed(query_embeds, sites), image_embeds, image_attention_mask, sites)
        return {"last_hidden_state": h, "pooler_output": h[:, 0]}
