"""BLIP-2 with an OPT language model in Linen, mirroring transformers' ``Blip2ForConditionalGeneration``.

The forward pass (transformers 5.24 ``Blip2ForConditionalGeneration.forward`` with
``get_image_features`` and ``get_placeholder_mask``), for NHWC ``pixels`` and a prompt ``input_ids``
that holds ``num_query_tokens`` image tokens per image (what ``Blip2Processor`` produces: the image
tokens come FIRST, before the left padding and BOS: ``[IMG]*Nq + [PAD]*p + [BOS] + text``)::

    image_embeds = vision_model(pixels).last_hidden_state          # [B, T_img, D_v], post-LN
    queries      = broadcast(query_tokens, [B, Nq, D_q])
    query_output = qformer(queries, image_embeds).last_hidden_state  # [B, Nq, D_q]
    features     = language_projection(query_output)                 # [B, Nq, D_lm]
    embeds       = embed_tokens(input_ids)                           # [B, T, D_lm]
    embeds       = masked_scatter(embeds, input_ids == image_token_index, features)
    logits       = language_model(inputs_embeds=embeds, attention_mask=attention_mask)

``masked_scatter`` fills the image-token positions in row-major order over the WHOLE batch with the
rows of ``features.reshape(-1, D_lm)``: with ``Nq`` image tokens per row, row ``b`` gets image
``b``'s queries in order. Rows with another count shift features across rows exactly as torch
does; more image tokens than ``B_img * Nq`` is torch's error, raised here too (with concrete ids;
under ``jit`` the surplus positions become NaN instead of reusing a feature). The image attention
mask HF passes to the Q-Former is all ones (no mask); the prompt's ``attention_mask`` goes to OPT
unchanged (None: all ones), image-token positions included, and OPT derives its positions from it
(``cumsum(mask) * mask - 1``, so the ``Nq`` image tokens are positions ``0..Nq-1``).

Parameters mirror the checkpoint: ``vision_model/...`` (``vision``), ``query_tokens``
``[1, Nq, D_q]``, ``qformer/...`` (``qformer``), ``language_projection/kernel|bias`` and
``language_model/model/decoder/...`` (``opt``; lm_head tied to ``embed_tokens``).

Sites: every site of the three towers, one table, one ``apply``: ``vision.*`` (``vision.embed``,
``vision.layers.{i}.*``, ``vision.pooled``), ``qformer.*`` (``qformer.embed``,
``qformer.layers.{i}.*`` with ``xattn.*`` on cross-attention layers) and ``lm.*`` (``lm.embed``,
``lm.layers.{i}.*``). The projected queries have NO site of their own: ``qformer.proj`` would be
``[B, Nq, D_lm]``, which breaks the ``[batch, d]`` layout of ``proj``, and no other point means
"after the projection". They are returned as the output ``image_features`` and are reachable at
``lm.embed`` on the image-token positions (``where`` along the token axis): an ``Add`` there equals
an ``Add`` to the projected queries (OPT's position embedding is added, not mixed), while a
``Replace`` / ``Ablate`` there also replaces that position embedding. ``vision.pooled`` is HF's
pooler output, which BLIP-2's forward computes but does not use, so an edit there changes nothing
downstream.

``generate`` is greedy decoding in one compiled program: the image features are computed once
(vision / Q-Former edits apply there), written into the prompt embeddings, and ``opt.generate``
decodes with a KV cache from those ``inputs_embeds`` (``lm.*`` edits apply at every step).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax import sites as sites_lib
from mrepe_jax.models import inputs as inputs_lib
from mrepe_jax.models.blip2 import opt
from mrepe_jax.models.blip2.opt import OPTConfig, OPTForCausalLM
from mrepe_jax.models.blip2.parts_convert import parts_from_hf_dict
from mrepe_jax.models.blip2.qformer import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    check_composable,
    qformer_site_names,
)
from mrepe_jax.models.blip2.vision import Blip2VisionConfig, Blip2VisionModel, vision_site_names
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layers import Dense
from mrepe_jax.sites import SitedModel, Sites

# The towers whose edits act on the image features (computed once per generate call).
IMAGE_TOWERS = ("vision", "qformer")


@dataclasses.dataclass(frozen=True)
class Blip2Config:
    """transformers' ``Blip2Config`` for an OPT language model (``Salesforce/blip2-opt-*``).

    ``image_token_index`` is the id of the placeholder token whose positions receive the projected
    queries (50265 in the blip2-opt checkpoints; transformers' own default is None, which would
    leave the image unused, so it is required here). The parts must compose: the Q-Former's
    ``encoder_hidden_size`` is the vision width (``qformer.check_composable``); the
    ``language_projection`` maps the Q-Former width onto the OPT width by construction, and a
    checkpoint whose projection has other widths fails at conversion naming both shapes.
    """

    vision_config: Blip2VisionConfig = Blip2VisionConfig()
    qformer_config: Blip2QFormerConfig = Blip2QFormerConfig()
    text_config: OPTConfig = OPTConfig()
    num_query_tokens: int = 32
    image_token_index: int = 50265

    def __post_init__(self):
        for name, cls in (("vision_config", Blip2VisionConfig), ("qformer_config", Blip2QFormerConfig),
                          ("text_config", OPTConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"Blip2Config.{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__} (use Blip2Config.from_hf_dict "
                                "for a transformers dict)")
        check_composable(self.vision_config, self.qformer_config)
        t = self.text_config
        if self.num_query_tokens < 1:
            raise ValueError(f"Blip2Config.num_query_tokens must be >= 1, got {self.num_query_tokens}")
        if not 0 <= self.image_token_index < t.vocab_size:
            raise ValueError(f"Blip2Config.image_token_index {self.image_token_index} is outside the "
                             f"language model's vocabulary [0, {t.vocab_size}) (text_config.vocab_size)")
        if self.num_query_tokens + 1 > t.max_position_embeddings:
            raise ValueError(f"Blip2Config.num_query_tokens {self.num_query_tokens} image tokens and a BOS "
                             f"do not fit the language model's text_config.max_position_embeddings "
                             f"{t.max_position_embeddings}")

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> Blip2Config:
        """From a transformers ``Blip2Config.to_dict()`` or a checkpoint's ``config.json``.

        As ``Blip2Config.__post_init__`` does, the Q-Former's ``encoder_hidden_size`` is taken from
        the vision width (``parts_convert.parts_from_hf_dict``). A non-OPT language model
        (Flan-T5, an encoder-decoder) is refused by name.
        """
        if d.get("model_type", "blip-2") != "blip-2":
            raise ValueError(f"not a BLIP-2 config: model_type is {d['model_type']!r}, expected 'blip-2'")
        text = dict(d.get("text_config") or {})  # transformers' default language model is OPT
        lm_type = text.get("model_type", "opt")
        if lm_type != "opt" or d.get("use_decoder_only_language_model") is False:
            raise ValueError(
                f"BLIP-2 with a {lm_type!r} language model (text_config.model_type) is not supported: "
                "only OPT decoders (Salesforce/blip2-opt-*) are implemented; Flan-T5 "
                "(blip2-flan-t5-*) is an encoder-decoder")
        vision, qformer, num_query_tokens = parts_from_hf_dict(d)
        image_token_index = d.get("image_token_index", d.get("image_token_id"))
        if image_token_index is None:
            raise ValueError(
                "Blip2Config.image_token_index is None: the prompt's image-token positions, where the "
                "projected queries go, cannot be found. Set it to the id of the processor's image "
                "token (50265 in Salesforce/blip2-opt-*)")
        return cls(vision, qformer, OPTConfig.from_hf_dict(text), int(num_query_tokens),
                   int(image_token_index))


def to_hf_dict(config: Blip2Config) -> dict[str, Any]:
    """The inverse of ``Blip2Config.from_hf_dict``: a ``config.json`` transformers reads."""
    text = dataclasses.asdict(config.text_config)
    text["_remove_final_layer_norm"] = text.pop("remove_final_layer_norm")
    if isinstance(text["eos_token_id"], tuple):
        text["eos_token_id"] = list(text["eos_token_id"])
    vision = dataclasses.asdict(config.vision_config)
    if isinstance(vision["image_size"], tuple):
        vision["image_size"] = list(vision["image_size"])
    return {
        "model_type": "blip-2",
        "architectures": ["Blip2ForConditionalGeneration"],
        "vision_config": dict(vision, model_type="blip_2_vision_model"),
        "qformer_config": dict(dataclasses.asdict(config.qformer_config), model_type="blip_2_qformer"),
        "text_config": dict(text, model_type="opt"),
        "num_query_tokens": config.num_query_tokens,
        "image_token_index": config.image_token_index,
        "use_decoder_only_language_model": True,
    }


def blip2_site_names(config: Blip2Config) -> tuple[str, ...]:
    """Every site of the composite, in forward order: vision, then Q-Former, then OPT."""
    return (vision_site_names(config.vision_config) + qformer_site_names(config.qformer_config)
            + opt.site_names(config.text_config.num_hidden_layers))


def image_token_mask(input_ids, image_token_index: int):
    """HF's ``get_placeholder_mask`` (from ids): True where ``input_ids == image_token_index``."""
    return input_ids == image_token_index


def check_image_tokens(input_ids, config: Blip2Config, num_images: int) -> None:
    """With concrete ids: no more image tokens than ``num_images * num_query_tokens`` features
    (torch's ``masked_scatter`` fails there). Traced ids are not checked (see ``merge``)."""
    if not inputs_lib.is_concrete(input_ids):
        return
    count = int(np.sum(np.asarray(input_ids) == config.image_token_index))
    have = num_images * config.num_query_tokens
    if count > have:
        raise ValueError(
            f"input_ids hold {count} image tokens (image_token_index {config.image_token_index}) but "
            f"{num_images} image(s) give {have} query features ({config.num_query_tokens} each): "
            "the prompt must hold num_query_tokens image tokens per image, as Blip2Processor writes")


def merge_image_features(input_ids, inputs_embeds, image_features, image_token_index: int):
    """torch's ``inputs_embeds.masked_scatter(input_ids == image_token_index, image_features)``.

    The k-th image-token position in row-major order over ``[B, T]`` gets row k of
    ``image_features.reshape(-1, D)``; a position past the last feature gets NaN (torch raises).
    """
    b, t, d = inputs_embeds.shape
    is_image = image_token_mask(input_ids, image_token_index).reshape(-1)
    source = image_features.reshape(-1, d).astype(inputs_embeds.dtype)
    index = jnp.maximum(jnp.cumsum(is_image) - 1, 0)
    gathered = source.at[index].get(mode="fill", fill_value=jnp.nan)
    return jnp.where(is_image[:, None], gathered, inputs_embeds.reshape(-1, d)).reshape(b, t, d)


class QueriedLanguageModel(SitedModel):
    """BLIP-2 from the image embeddings on: ``query_tokens`` -> Q-Former (cross-attending to the
    embeddings) -> ``language_projection`` -> written at the prompt's image tokens -> OPT.
    ``Blip2ForConditionalGeneration`` puts its vision tower in front; the ToyWorld captioner
    (``train.captioner``) reads a frozen CLIP's. ``config`` needs ``qformer_config``,
    ``text_config``, ``num_query_tokens`` and ``image_token_index``. Subclasses define
    ``image_features(source, sites)`` (a dict with ``"image_features"`` [B_img, Nq, D_lm]) and
    ``site_names()``."""

    config: Any
    dtype: jnp.dtype = jnp.float32
    execution: Execution = Execution()

    def setup(self):
        c = self.config
        self.query_tokens = self.param("query_tokens", nn.initializers.normal(0.02),
                                       (1, c.num_query_tokens, c.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(c.qformer_config, self.dtype, self.execution)
        self.language_projection = Dense(c.text_config.hidden_size, dtype=self.dtype)
        self.language_model = OPTForCausalLM(c.text_config, self.dtype)

    def tower_layers(self) -> dict[str, int]:
        c = self.config
        return {"qformer": c.qformer_config.num_hidden_layers, "lm": c.text_config.num_hidden_layers}

    def queries(self, batch: int):
        """The learned query tokens broadcast over a batch, ``[B, Nq, D_q]``."""
        queries = self.query_tokens.astype(self.dtype)
        return jnp.broadcast_to(queries, (batch,) + queries.shape[1:])

    def query_features(self, image_embeds, sites: Sites = Sites()):
        """Q-Former over the broadcast query tokens (every image token attended to) ->
        ``language_projection``: ``{"image_features", "qformer_outputs"}``."""
        qformer = self.qformer(self.queries(image_embeds.shape[0]), image_embeds, None, sites=sites)
        return {"image_features": self.language_projection(qformer["last_hidden_state"]),
                "qformer_outputs": qformer}

    def embed_prompt(self, source, input_ids, sites: Sites = Sites()):
        """``(inputs_embeds [B, T, D_lm], image outputs)``: the prompt's token embeddings with the
        projected queries written at the image tokens (what the language model receives);
        ``source`` is what ``image_features`` reads (pixels, or image embeddings)."""
        c = self.config
        inputs_lib.check_ids(input_ids, c.text_config.vocab_size, "lm")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} must be [batch, tokens]")
        check_image_tokens(input_ids, c, source.shape[0])
        image = self.image_features(source, sites)
        return self.prompt_embeds(input_ids, image["image_features"]), image

    def prompt_embeds(self, input_ids, features):
        """The prompt's token embeddings with the projected queries ``features`` written at its
        image tokens (``merge_image_features``)."""
        c = self.config
        embed_tokens = self.language_model.model.decoder.embed_tokens
        embeds = embed_tokens(inputs_lib.safe_ids(input_ids, c.text_config.vocab_size))
        return merge_image_features(input_ids, embeds, features, c.image_token_index)

    def __call__(self, source, input_ids, attention_mask=None, sites: Sites = Sites()):
        embeds, image = self.embed_prompt(source, input_ids, sites)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        inputs_lib.check_mask(attention_mask, input_ids, "lm")
        lm = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, sites=sites)
        return dict(image, logits=lm["logits"], language_model_outputs=lm)


class Blip2ForConditionalGeneration(QueriedLanguageModel):
    """transformers' ``Blip2ForConditionalGeneration`` (OPT). ``apply(variables, pixels_nhwc,
    input_ids, attention_mask=None, edits=, capture=)`` returns ``(outputs, acts)`` with outputs
    ``{"logits" [B, T, V], "image_features" [B_img, Nq, D_lm], "vision_outputs",
    "qformer_outputs", "language_model_outputs"}`` (the parts' output dicts).

    ``execution`` reaches the vision tower (scanned layers: its params stacked, ``layer_stack``)
    and the Q-Former (fused attention); OPT always runs its layers unrolled.
    """

    config: Blip2Config

    def setup(self):
        super().setup()
        self.vision_model = Blip2VisionModel(self.config.vision_config, "vision", self.dtype,
                                             self.execution)

    def tower_layers(self) -> dict[str, int]:
        return {"vision": self.config.vision_config.num_hidden_layers, **super().tower_layers()}

    def site_names(self) -> tuple[str, ...]:
        return blip2_site_names(self.config)

    def image_features(self, pixel_values, sites: Sites = Sites()):
        """HF's ``get_image_features``: vision tower -> ``query_features``."""
        vision = self.vision_model(pixel_values, sites=sites)
        return {**self.query_features(vision["last_hidden_state"], sites), "vision_outputs": vision}


def split_edits(edits: Mapping[str, Any]) -> tuple[dict, dict]:
    """(edits at vision / Q-Former sites, edits at ``lm`` sites), by the tower in the site name."""
    image = {k: v for k, v in edits.items() if k.split(".", 1)[0] in IMAGE_TOWERS}
    return image, {k: v for k, v in edits.items() if k not in image}


def default_prompt(config: Blip2Config, batch: int) -> np.ndarray:
    """HF's prompt when ``generate`` gets no ``input_ids``: ``[IMG]*Nq + [BOS]`` per image."""
    bos = config.text_config.bos_token_id
    if bos is None:
        raise ValueError("generate without input_ids needs text_config.bos_token_id, which is None")
    return np.tile(np.asarray([config.image_token_index] * config.num_query_tokens + [bos], np.int32),
                   (batch, 1))


def generate(model: Blip2ForConditionalGeneration, params, pixel_values, input_ids=None,
             attention_mask=None, max_new_tokens: int = 20, *, edits=None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             return_logits: bool = False, prefill_edits=None):
    """Greedy decoding as HF ``Blip2ForConditionalGeneration.generate(do_sample=False)``; returns
    the new tokens ``[B, max_new_tokens]`` (HF returns the prompt ids before them) and, with
    ``return_logits``, their logits ``[B, max_new_tokens, V]``.

    One compiled program per (model, shapes, max_new_tokens, eos, pad, edit structure): the image
    features are computed once with the ``vision.*`` / ``qformer.*`` edits, written into the
    prompt embeddings, and ``opt.generate`` decodes from them with the ``lm.*`` edits (applied at
    the prefill and at every new token; see ``opt.generate`` for the shapes they must fit) and the
    ``lm.*`` ``prefill_edits`` (at the prompt pass only; ``vision.*`` / ``qformer.*`` ones act
    once anyway, as in ``edits``).
    ``eos_token_id`` / ``pad_token_id`` default to the OPT config's, as HF's generation config.
    """
    c = model.config
    if input_ids is None:
        input_ids = default_prompt(c, pixel_values.shape[0])
    if attention_mask is None:
        attention_mask = np.ones(np.shape(input_ids), np.int32)
    inputs_lib.check_mask(attention_mask, input_ids, "lm")
    inputs_lib.check_ids(input_ids, c.text_config.vocab_size, "lm")
    check_image_tokens(input_ids, c, pixel_values.shape[0])
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    edits = sites_lib.validate_edits(edits, model.site_names())
    prefill_edits = sites_lib.validate_edits(prefill_edits, model.site_names())
    if isinstance(eos_token_id, list):
        eos_token_id = tuple(eos_token_id)
    return _generate(model, params, jnp.asarray(pixel_values), jnp.asarray(input_ids, jnp.int32),
                     jnp.asarray(attention_mask, jnp.int32), edits, prefill_edits, max_new_tokens=max_new_tokens,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id, return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "eos_token_id", "pad_token_id",
                                             "return_logits"))
def _generate(model, params, pixel_values, input_ids, attention_mask, edits, prefill_edits, *, max_new_tokens,
              eos_token_id, pad_token_id, return_logits):
    return decode(model, params, pixel_values, input_ids, attention_mask, edits, prefill_edits,
                  max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                  return_logits=return_logits)


def decode(model: QueriedLanguageModel, params, source, input_ids, attention_mask, edits=None,
           prefill_edits=None, **generate_kw):
    """The traceable body of greedy decoding for any ``QueriedLanguageModel``: the prompt's
    embeddings (image features computed once, with the non-``lm`` edits of both dicts), then
    ``opt.generate`` with the ``lm`` edits (``prefill_edits``' at the prompt pass only). Call it
    inside a jit: ``opt.generate``'s own jit is then traced inline and the whole decode is one
    program."""
    image_edits, lm_edits = split_edits(edits or {})
    image_prefill, lm_prefill = split_edits(prefill_edits or {})
    (embeds, _), _ = model.apply({"params": params}, source, input_ids,
                                 edits=opt.with_prefill(image_edits, image_prefill), method="embed_prompt")
    lm = OPTForCausalLM(model.config.text_config, model.dtype)
    return opt.generate(lm, params["language_model"], inputs_embeds=embeds, attention_mask=attention_mask,
                        edits=lm_edits, prefill_edits=lm_prefill, **generate_kw)
