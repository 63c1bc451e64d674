"""OPT, the decoder-only language model BLIP-2 writes its image queries into, in Flax Linen.

Mirrors transformers' ``OPTForCausalLM`` (``models/opt/modeling_opt.py``) in its pre-LayerNorm form
(``do_layer_norm_before=True``, ``word_embed_proj_dim == hidden_size``: every OPT that BLIP-2 uses).
Module names mirror the checkpoint: ``model/decoder/layers/3/self_attn/q_proj/kernel`` here is
``model.decoder.layers.3.self_attn.q_proj.weight`` (transposed) there, and ``lm_head`` is tied to
``model/decoder/embed_tokens`` (no parameter of its own).

Sites (DESIGN.md §3), tower ``lm``: ``lm.embed`` (token embeddings + learned positions, the input of
layer 0) and ``lm.layers.{i}.{point}`` for every point of ``sites.LAYER_POINTS``.

``OPTForCausalLM.apply(variables, input_ids=... | inputs_embeds=..., attention_mask=..., edits=...,
capture=...)`` returns ``(outputs, acts)`` like every sited model. With a ``cache`` (``init_cache``)
the same call is one step of incremental decoding: the new tokens fill cache slots
``[cache_index, cache_index + T)`` and ``attention_mask`` covers every slot ``[B, max_len]``.
``generate`` runs cached greedy decoding as one compiled program (``lax.while_loop``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mrepe_jax import edits as edits_lib
from mrepe_jax import sites as sites_lib
from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.attention import (
    causal_mask,
    dot_product_attention,
    padding_mask,
    split_heads,
)
from mrepe_jax.models.layers import ACT_FNS, Dense, layer_norm
from mrepe_jax.sites import LAYER_POINTS, LayerSites, SitedModel, Sites, layer_site

TOWER = "lm"
# OPTLearnedPositionalEmbedding: the table has max_position_embeddings + 2 rows and position p is
# row p + 2 (a fairseq leftover from reserving rows for padding_idx).
POSITION_OFFSET = 2
# transformers' OPT builds its LayerNorms with torch's default epsilon; the config has no field.
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """transformers' ``OPTConfig`` fields (same names), restricted to what the Flax model runs.

    Unsupported variants raise a ``ValueError`` naming the field: post-LN (``do_layer_norm_before=
    False``, opt-350m), ``project_in``/``project_out`` (``word_embed_proj_dim != hidden_size``),
    LayerNorms without parameters, the legacy ``_remove_final_layer_norm`` and an untied lm_head.
    """

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    activation_function: str = "relu"
    do_layer_norm_before: bool = True
    word_embed_proj_dim: int | None = None
    layer_norm_elementwise_affine: bool = True
    enable_bias: bool = True
    remove_final_layer_norm: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | tuple[int, ...] | None = 2

    def __post_init__(self):
        if self.word_embed_proj_dim is None:
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if not self.do_layer_norm_before:
            raise ValueError("OPTConfig.do_layer_norm_before=False (the post-LayerNorm OPT, e.g. "
                             "opt-350m) is not supported; only the pre-LN variant is implemented")
        if self.word_embed_proj_dim != self.hidden_size:
            raise ValueError(
                f"OPTConfig.word_embed_proj_dim={self.word_embed_proj_dim} != hidden_size="
                f"{self.hidden_size} needs project_in/project_out, which are not supported")
        if not self.layer_norm_elementwise_affine:
            raise ValueError("OPTConfig.layer_norm_elementwise_affine=False (LayerNorms without "
                             "scale/bias) is not supported")
        if self.remove_final_layer_norm:
            raise ValueError("OPTConfig._remove_final_layer_norm=True (pre-v4.20 fine-tunes without "
                             "a final LayerNorm) is not supported")
        if not self.tie_word_embeddings:
            raise ValueError("OPTConfig.tie_word_embeddings=False (an lm_head of its own) is not "
                             "supported: the lm_head is the token embedding")
        if self.activation_function not in ACT_FNS:
            raise ValueError(f"OPTConfig.activation_function {self.activation_function!r} is not one "
                             f"of {tuple(ACT_FNS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"OPTConfig.hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> OPTConfig:
        """From a transformers ``config.json`` dict (or ``OPTConfig.to_dict()``)."""
        if d.get("model_type", "opt") != "opt":
            raise ValueError(f"not an OPT config: model_type is {d['model_type']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "_remove_final_layer_norm" in d:
            kwargs["remove_final_layer_norm"] = d["_remove_final_layer_norm"]
        return cls(**kwargs)


def site_names(num_layers: int) -> tuple[str, ...]:
    """The ``lm`` tower's sites in forward order (OPT has no ``pooled``/``proj``)."""
    return (f"{TOWER}.embed",) + tuple(
        layer_site(TOWER, i, p) for i in range(num_layers) for p in LAYER_POINTS)


def init_cache(config: OPTConfig, batch: int, max_len: int, dtype=jnp.float32) -> tuple:
    """An empty KV cache: per layer ``{"k", "v"}`` of shape ``[batch, heads, max_len, head_dim]``.

    Head-major, the layout of the attention matmuls: a decoding step writes its new keys and values
    into it in place, where a token-major cache would be transposed whole in every layer at every
    step (``dot_product_attention`` works head-major)."""
    shape = (batch, config.num_attention_heads, max_len, config.head_dim)
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                 for _ in range(config.num_hidden_layers))


def _qkv_done(site):
    """``site`` with ``attn.q/k/v`` as the identity: in the cached path those sites are applied to
    the new tokens before they enter the cache, so ``dot_product_attention`` must not apply them
    again to the whole cache (an ``Add`` would otherwise accumulate on past keys)."""
    def tap(point, x):
        return x if point in ("attn.q", "attn.k", "attn.v") else site(point, x)
    return tap


class OPTAttention(nn.Module):
    """HF ``OPTAttention``: ``softmax((x Wq + bq)(x Wk + bk)^T / sqrt(d_h) + mask) (x Wv + bv)``.

    HF scales q by ``d_h**-0.5`` before ``Q K^T``; here ``attn.q`` is the unscaled projection and
    ``attn.logits`` the raw ``Q K^T`` (the site contract), scaled afterwards by the shared
    ``dot_product_attention``. The two orders differ by float rounding only (exactly equal when
    ``d_h`` is a power of 4, e.g. 64).
    """

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, site: LayerSites, mask, kv=None, cache_index=0):
        c = self.config
        site = site.bind(self)

        def proj(name):
            y = Dense(c.hidden_size, use_bias=c.enable_bias, dtype=self.dtype, name=name)(x)
            return split_heads(y, c.num_attention_heads)

        q = site("attn.q", proj("q_proj"))
        k = site("attn.k", proj("k_proj"))
        v = site("attn.v", proj("v_proj"))
        if kv is not None:
            kh, vh = (lax.dynamic_update_slice(kv[n], x.transpose(0, 2, 1, 3).astype(kv[n].dtype),
                                               (0, 0, cache_index, 0)) for n, x in (("k", k), ("v", v)))
            kv = {"k": kh, "v": vh}
            # Token-major views for the shared attention, which transposes them straight back to
            # head-major: XLA folds the two transposes, so the cache is read where it lies.
            k, v = kh.transpose(0, 2, 1, 3), vh.transpose(0, 2, 1, 3)
        z = dot_product_attention(_qkv_done(site), "attn", q, k, v, mask)
        out = Dense(c.hidden_size, use_bias=c.enable_bias, dtype=self.dtype, name="out_proj")(
            z.reshape(x.shape[:-1] + (c.hidden_size,)))
        return out, kv


class OPTDecoderLayer(nn.Module):
    """HF ``OPTDecoderLayer`` (pre-LN): ``h += attn(LN1(h)); h += fc2(act(fc1(LN2(h))))``."""

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, sites: Sites, mask, index: int, kv=None, cache_index=0):
        c = self.config
        site = LayerSites(sites, self, TOWER, index, c.num_hidden_layers)
        h = site("resid_pre", h)
        a, kv = OPTAttention(c, self.dtype, name="self_attn")(
            layer_norm(LAYER_NORM_EPS, "self_attn_layer_norm", self.dtype)(h), site, mask, kv,
            cache_index)
        a = site("attn_out", a)
        h = site("resid_mid", h + a)
        m = Dense(c.ffn_dim, use_bias=c.enable_bias, dtype=self.dtype, name="fc1")(
            layer_norm(LAYER_NORM_EPS, "final_layer_norm", self.dtype)(h))
        m = site("mlp.hidden", ACT_FNS[c.activation_function](m))
        m = site("mlp_out", Dense(c.hidden_size, use_bias=c.enable_bias, dtype=self.dtype, name="fc2")(m))
        return site("resid_post", h + m), kv


class OPTLayerCollection(nn.Module):
    """``layers/{i}/...``: the checkpoint's per-layer layout, run as a Python loop."""

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.layers = [OPTDecoderLayer(self.config, self.dtype, name=str(i))
                       for i in range(self.config.num_hidden_layers)]

    def __call__(self, h, sites: Sites, mask, start: int, stop: int, cache=None, cache_index=0):
        new_cache = list(cache) if cache is not None else None
        for i in range(start, stop):
            h, kv = self.layers[i](h, sites, mask, i, None if cache is None else cache[i], cache_index)
            if cache is not None:
                new_cache[i] = kv
        return h, None if cache is None else tuple(new_cache)


class OPTDecoder(nn.Module):
    """HF ``OPTDecoder``: token + learned position embeddings, the layers, the final LayerNorm."""

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype)
        self.embed_positions = nn.Embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size,
                                        dtype=self.dtype)
        self.layers = OPTLayerCollection(c, self.dtype)
        self.final_layer_norm = layer_norm(LAYER_NORM_EPS, None, self.dtype)

    def embed(self, input_ids, inputs_embeds, attention_mask, sites: Sites, cache_index=0):
        """``lm.embed``: token embeddings (or the given ``inputs_embeds``) + learned positions.

        Positions follow HF: ``cumsum(mask) * mask - 1`` over every slot of ``attention_mask``,
        read at the new tokens' slots, so a left-padded row starts at position 0 at its first real
        token (padding gets -1, i.e. table row 1).
        """
        c = self.config
        if inputs_embeds is None:
            inputs_lib.check_ids(input_ids, c.vocab_size, TOWER)
            inputs_embeds = self.embed_tokens(inputs_lib.safe_ids(input_ids, c.vocab_size))
        else:
            inputs_lib.check_batch(inputs_embeds, "inputs_embeds", TOWER)
            inputs_lib.check_finite(inputs_embeds, "inputs_embeds", TOWER)
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != c.hidden_size:
                raise ValueError(f"inputs_embeds of shape {inputs_embeds.shape} are not "
                                 f"[batch, tokens, {c.hidden_size}]")
        m = attention_mask.astype(jnp.int32)
        positions = jnp.cumsum(m, axis=1) * m - 1
        positions = lax.dynamic_slice_in_dim(positions, cache_index, inputs_embeds.shape[1], axis=1)
        h = inputs_embeds.astype(self.dtype) + self.embed_positions(positions + POSITION_OFFSET)
        return sites(self, f"{TOWER}.embed", h)

    def run_layers(self, h, sites: Sites, mask, start=0, stop=None, cache=None, cache_index=0):
        n = self.config.num_hidden_layers
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"layer range [{start}, {stop}) is outside the lm tower's 0..{n}")
        return self.layers(h, sites, mask, start, stop, cache, cache_index)


def layer_mask(attention_mask, num_queries: int, cache_index=0):
    """``[B, 1, Tq, S]`` boolean: query ``t`` (cache slot ``cache_index + t``) sees key slot ``j``
    when ``j <= cache_index + t`` and ``attention_mask[:, j]`` (HF's causal AND padding mask)."""
    s = attention_mask.shape[1]
    if isinstance(cache_index, int) and cache_index == 0 and num_queries == s:
        causal = causal_mask(s)
    else:
        slots = cache_index + jnp.arange(num_queries)
        causal = (jnp.arange(s)[None, :] <= slots[:, None])[None, None]
    return causal & padding_mask(attention_mask)


class OPTModel(nn.Module):
    """HF ``OPTModel``: holds the decoder (the ``model/decoder`` parameter path)."""

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.decoder = OPTDecoder(self.config, self.dtype)


class OPTForCausalLM(SitedModel):
    """HF ``OPTForCausalLM``: logits ``final_layer_norm(h) @ embed_tokens^T`` (tied lm_head).

    Staged for sweeps (``apply(..., method=...)``): ``embed`` -> ``run_layers`` -> ``readout``.
    """

    config: OPTConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.model = OPTModel(self.config, self.dtype)

    def tower_layers(self) -> dict[str, int]:
        return {TOWER: self.config.num_hidden_layers}

    def site_names(self) -> tuple[str, ...]:
        return site_names(self.config.num_hidden_layers)

    def _inputs(self, input_ids, inputs_embeds, attention_mask, cache):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        x = input_ids if input_ids is not None else inputs_embeds
        b, t = x.shape[:2]
        slots = t if cache is None else cache[0]["k"].shape[2]
        if attention_mask is None:
            if cache is not None:
                raise ValueError("a cached step needs the attention_mask of every cache slot [B, max_len]")
            attention_mask = jnp.ones((b, t), jnp.int32)
        if tuple(attention_mask.shape) != (b, slots):
            what = "input tokens" if cache is None else "cache slots"
            raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} does not match "
                             f"the {b} x {slots} {what} of the lm tower")
        if slots > self.config.max_position_embeddings:
            raise ValueError(f"{slots} tokens exceed the lm tower's {self.config.max_position_embeddings} "
                             "positions (max_position_embeddings)")
        return attention_mask

    def embed(self, input_ids=None, inputs_embeds=None, attention_mask=None, sites: Sites = Sites()):
        """Inputs -> residual stream entering layer 0 (after the ``lm.embed`` site)."""
        attention_mask = self._inputs(input_ids, inputs_embeds, attention_mask, None)
        return self.model.decoder.embed(input_ids, inputs_embeds, attention_mask, sites)

    def run_layers(self, h, start: int = 0, stop: int | None = None, attention_mask=None,
                   sites: Sites = Sites()):
        """Layers ``[start, stop)`` on residual stream ``h`` [B, T, D] (no cache)."""
        if attention_mask is None:
            attention_mask = jnp.ones(h.shape[:2], jnp.int32)
        mask = layer_mask(attention_mask, h.shape[1])
        return self.model.decoder.run_layers(h, sites, mask, start, stop)[0]

    def readout(self, h, sites: Sites = Sites()):
        """Final residual stream -> ``(logits, last_hidden_state)``."""
        h = self.model.decoder.final_layer_norm(h)
        return self.model.decoder.embed_tokens.attend(h), h

    def __call__(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                 sites: Sites = Sites(), cache=None, cache_index=0, last_only: bool = False):
        """``{"logits" [B, T, V], "last_hidden_state" [B, T, D]}`` (+ ``"cache"`` when given one).

        ``last_only``: both for the last token only (``[B, 1, ...]``), all a greedy step reads: a
        prefill then skips the lm_head over the rest of the prompt (the readout has no sites)."""
        attention_mask = self._inputs(input_ids, inputs_embeds, attention_mask, cache)
        decoder = self.model.decoder
        h = decoder.embed(input_ids, inputs_embeds, attention_mask, sites, cache_index)
        mask = layer_mask(attention_mask, h.shape[1], cache_index)
        h, cache = decoder.run_layers(h, sites, mask, cache=cache, cache_index=cache_index)
        logits, last = self.readout(h[:, -1:] if last_only else h)
        out = {"logits": logits, "last_hidden_state": last}
        if cache is not None:
            out["cache"] = cache
        return out


def _eos_tuple(eos) -> tuple[int, ...]:
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, Sequence) else (eos,)))


def with_prefill(edits: dict, prefill_edits: dict) -> dict:
    """The prompt pass's edits: ``edits`` and ``prefill_edits`` together (both, in that order,
    where they share a site)."""
    out = dict(edits)
    for site, e in prefill_edits.items():
        out[site] = (*edits_lib.as_tuple(out[site]), *edits_lib.as_tuple(e)) if site in out else e
    return out


def generate(model: OPTForCausalLM, params, *, input_ids=None, inputs_embeds=None, attention_mask=None,
             max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, edits=None, prefill_edits=None, return_logits: bool = False):
    """Greedy decoding with a KV cache, as HF ``generate(do_sample=False)``; returns the new tokens
    ``[B, max_new_tokens]`` (and their logits ``[B, max_new_tokens, V]`` with ``return_logits``).

    Prompts are LEFT-padded (``attention_mask`` 0 on the left), as for HF's decoder-only generate.
    ``eos_token_id`` (None: the config's; ``()``: never stop): a row that produced one gets
    ``pad_token_id`` (None: the config's, else the first eos) from then on, and decoding stops when
    every row has. ``edits`` apply at every step, prefill and each new token alike, so their
    operands must fit both ``[B, T_prompt, ...]`` and ``[B, 1, ...]`` activations (scalars, ``[D]``
    vectors, size-1 token axes); at ``attn.logits/pattern`` the key axis is the cache's
    ``T_prompt + max_new_tokens`` slots. ``prefill_edits`` apply at the prompt pass only
    (operands fitting ``[B, T_prompt, ...]``, e.g. a ``where`` over the prompt's tokens): the new
    tokens read what they changed through the KV cache. Compiled once per (model, shapes,
    max_new_tokens, eos, pad, edit structure): new prompt values or edit arrays do not retrace.
    """
    c = model.config
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids or inputs_embeds")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt = input_ids if input_ids is not None else inputs_embeds
    if attention_mask is None:
        attention_mask = jnp.ones(prompt.shape[:2], jnp.int32)
    eos = _eos_tuple(c.eos_token_id if eos_token_id is None else eos_token_id)
    pad = pad_token_id if pad_token_id is not None else c.pad_token_id
    pad = pad if pad is not None else (eos[0] if eos else 0)
    # Validated here, on concrete values (inside jit, NaN checks cannot see the arrays).
    edits = sites_lib.validate_edits(edits, model.site_names())
    prefill_edits = sites_lib.validate_edits(prefill_edits, model.site_names())
    return _generate(model, params, input_ids, inputs_embeds, jnp.asarray(attention_mask, jnp.int32),
                     edits, prefill_edits, max_new_tokens=max_new_tokens, eos=eos, pad=int(pad),
                     return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos", "pad", "return_logits"))
def _generate(model, params, input_ids, inputs_embeds, attention_mask, edits, prefill_edits, *,
              max_new_tokens: int,
              eos: tuple[int, ...], pad: int, return_logits: bool):
    b, t = attention_mask.shape
    n = max_new_tokens
    slots = t + n - 1  # the last new token is never fed back
    variables = {"params": params}
    mask = jnp.zeros((b, slots), jnp.int32).at[:, :t].set(attention_mask)
    eos_ids = jnp.asarray(eos, jnp.int32)

    def pick(logits, done):
        # HF's greedy step: argmax, pad for finished rows, then mark rows that just emitted eos.
        tok = jnp.where(done, pad, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        return tok, done | (tok[:, None] == eos_ids).any(-1)

    out, _ = model.apply(variables, input_ids=input_ids, inputs_embeds=inputs_embeds,
                         attention_mask=mask, cache=init_cache(model.config, b, slots, model.dtype),
                         cache_index=0, edits=with_prefill(edits, prefill_edits), last_only=True)
    logits = out["logits"][:, -1]
    tok, done = pick(logits, jnp.zeros((b,), bool))
    tokens = jnp.full((b, n), pad, jnp.int32).at[:, 0].set(tok)
    all_logits = jnp.zeros((b, n, logits.shape[-1]), logits.dtype).at[:, 0].set(logits) if return_logits else None

    def cond(state):
        k, _, done = state[:3]
        return (k < n) & ~done.all()

    def body(state):
        k, tok, done, cache, mask, tokens, all_logits = state
        slot = t + k - 1  # where the previous token goes
        mask = lax.dynamic_update_slice(mask, jnp.ones((b, 1), jnp.int32), (0, slot))
        out, _ = model.apply(variables, input_ids=tok[:, None], attention_mask=mask, cache=cache,
                             cache_index=slot, edits=edits)
        logits = out["logits"][:, 0]
        tok, done = pick(logits, done)
        tokens = lax.dynamic_update_slice(tokens, tok[:, None], (0, k))
        if all_logits is not None:
            all_logits = lax.dynamic_update_slice(all_logits, logits[:, None], (0, k, 0))
        return k + 1, tok, done, out["cache"], mask, tokens, all_logits

    state = (jnp.asarray(1, jnp.int32), tok, done, out["cache"], mask, tokens, all_logits)
    tokens, all_logits = lax.while_loop(cond, body, state)[5:]
    return (tokens, all_logits) if return_logits else tokens
