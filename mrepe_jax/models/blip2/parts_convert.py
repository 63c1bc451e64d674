"""Conversion tables for BLIP-2's vision tower and Q-Former (DESIGN.md §2), one ``Rule`` list per
part, plus in-memory helpers for tests (``from_torch_vision`` / ``from_torch_qformer``).

Every table takes the checkpoint ``prefix`` of its part, so the full BLIP-2 table is the
concatenation of the parts' tables with the prefixes ``Blip2ForConditionalGeneration`` uses
(checked against transformers 5.24, which has no key renaming for BLIP-2):

==================  =========================  =============================================
HF prefix           Flax module                table
==================  =========================  =============================================
``vision_model.``   ``vision_model``           ``vision_rules(VISION_PREFIX)``
``qformer.``        ``qformer``                ``qformer_rules(QFORMER_PREFIX)``
``query_tokens``    top-level ``query_tokens``  ``QUERY_TOKENS_RULE`` (``[1, Nq, D]``, as is)
``language_projection.``, ``language_model.``    not parts of this file
==================  =========================  =============================================

Group 1 of a rule's regex is the module path *including* the prefix, so a part's Flax subtree must
sit under a module of the prefix's name (``vision_model`` / ``qformer``), as in the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.blip2.qformer import Blip2QFormerConfig, Blip2QFormerModel
from mrepe_jax.models.blip2.vision import Blip2VisionConfig, Blip2VisionModel
from mrepe_jax.models.convert import (
    Rule,
    hwio_to_oihw,
    linear_and_norm_rules,
    oihw_to_hwio,
    param_shapes,
    to_flax,
    to_numpy,
)

VISION_PREFIX = "vision_model."
QFORMER_PREFIX = "qformer."


def vision_rules(prefix: str = "") -> tuple[Rule, ...]:
    """``Blip2VisionModel`` keys (under ``prefix``) -> ``vision.Blip2VisionModel`` params."""
    p = re.escape(prefix)
    layer = r"encoder\.layers\.\d+"
    linear = rf"{layer}\.(?:self_attn\.(?:qkv|projection)|mlp\.fc[12])"
    norm = rf"{layer}\.layer_norm[12]|post_layernorm"
    # qkv.weight is [3D, D] with rows [q | k | v]; transposed, its columns keep that order; qkv.bias
    # is ONE [3D] vector (its q, k and v thirds), kept as it is like every bias.
    return (
        Rule(rf"({p}embeddings\.patch_embedding)\.weight", "kernel", oihw_to_hwio, hwio_to_oihw,
             hf_leaf="weight"),
        Rule(rf"({p}embeddings)\.class_embedding", "class_embedding"),
        Rule(rf"({p}embeddings)\.position_embedding", "position_embedding"),
        Rule(rf"({p}embeddings\.patch_embedding)\.bias", "bias"),
    ) + linear_and_norm_rules(rf"{p}{linear}", rf"{p}(?:{norm})")  # qkv: see the note above


def qformer_rules(prefix: str = "") -> tuple[Rule, ...]:
    """``Blip2QFormerModel`` keys (under ``prefix``) -> ``qformer.Blip2QFormerModel`` params."""
    p = re.escape(prefix)
    layer = r"encoder\.layer\.\d+"
    dense = (rf"{layer}\.(?:(?:attention|crossattention)\.(?:attention\.(?:query|key|value)|output\.dense)"
             rf"|intermediate_query\.dense|output_query\.dense)")
    norm = rf"{layer}\.(?:attention\.output|crossattention\.output|output_query)\.LayerNorm|layernorm"
    return linear_and_norm_rules(rf"{p}{dense}", rf"{p}(?:{norm})")


# The composite's [1, Nq, D] learned queries (a top-level parameter in HF and here).
QUERY_TOKENS_RULE = Rule(r"()query_tokens", "query_tokens")


def qformer_ignored(config: Blip2QFormerConfig, prefix: str = "") -> tuple[str, ...]:
    """Checkpoint keys the query-only Q-Former leaves unused on purpose: with
    ``use_qformer_text_input`` each layer also holds a text-token MLP (``intermediate.dense``,
    ``output.dense``, ``output.LayerNorm``) that only text inputs go through."""
    if not config.use_qformer_text_input:
        return ()
    text_mlp = r"encoder\.layer\.\d+\.(?:intermediate\.dense|output\.(?:dense|LayerNorm))"
    return (rf"{re.escape(prefix)}{text_mlp}\.(?:weight|bias)",)


def vision_param_shapes(config: Blip2VisionConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    h, w = config.image_hw
    return param_shapes(Blip2VisionModel(config), jnp.zeros((1, h, w, config.num_channels)))


def qformer_param_shapes(config: Blip2QFormerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    return param_shapes(Blip2QFormerModel(config), jnp.zeros((1, 1, config.hidden_size)),
                   jnp.zeros((1, 1, config.encoder_hidden_size)))


def _prefixed(shapes: Mapping, prefix: str) -> dict:
    """Flax paths of a part placed under the module its checkpoint prefix names."""
    head = tuple(prefix.rstrip(".").split(".")) if prefix else ()
    return {head + k: v for k, v in shapes.items()}


def _part(state_dict: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    return {k: to_numpy(v) for k, v in state_dict.items() if k.startswith(prefix)}


def _unprefix(params: dict, prefix: str) -> dict:
    for name in (prefix.rstrip(".").split(".") if prefix else ()):
        params = params[name]
    return params


def convert_vision(state_dict, config: Blip2VisionConfig, prefix: str = "",
                   source: str = "checkpoint") -> dict:
    """The ``prefix``-ed vision keys of an HF state dict -> params of ``Blip2VisionModel(config)``
    (keys outside ``prefix`` are not looked at; inside it, every key must be used)."""
    shapes = _prefixed(vision_param_shapes(config), prefix)
    params = to_flax(_part(state_dict, prefix), vision_rules(prefix), shapes, (), source)
    return _unprefix(params, prefix)


def convert_qformer(state_dict, config: Blip2QFormerConfig, prefix: str = "",
                    source: str = "checkpoint") -> dict:
    """The ``prefix``-ed Q-Former keys of an HF state dict -> params of ``Blip2QFormerModel(config)``."""
    shapes = _prefixed(qformer_param_shapes(config), prefix)
    params = to_flax(_part(state_dict, prefix), qformer_rules(prefix), shapes,
                     qformer_ignored(config, prefix), source)
    return _unprefix(params, prefix)


def parts_from_hf_dict(d: Mapping[str, Any]) -> tuple[Blip2VisionConfig, Blip2QFormerConfig, int]:
    """(vision config, Q-Former config, num_query_tokens) from a full ``Blip2Config`` dict. As
    ``Blip2Config.__post_init__`` does, the Q-Former's ``encoder_hidden_size`` is set to the vision
    width (a stale value in a ``config.json`` is overridden, not trusted)."""
    if "vision_config" not in d or "qformer_config" not in d:
        raise ValueError("not a BLIP-2 config: expected 'vision_config' and 'qformer_config' keys, got "
                         f"{sorted(d)[:12]}")
    vision = Blip2VisionConfig.from_hf_dict(d["vision_config"])
    qformer = Blip2QFormerConfig.from_hf_dict(
        dict(d["qformer_config"], encoder_hidden_size=vision.hidden_size))
    return vision, qformer, int(d.get("num_query_tokens", 32))


def from_torch_vision(hf_model) -> tuple[Blip2VisionModel, dict]:
    """(model, params) from an in-memory ``transformers.Blip2VisionModel``."""
    config = Blip2VisionConfig.from_hf_dict(hf_model.config.to_dict())
    return Blip2VisionModel(config), convert_vision(hf_model.state_dict(), config,
                                                    source="transformers Blip2VisionModel")


def from_torch_qformer(hf_model) -> tuple[Blip2QFormerModel, dict]:
    """(model, params) from an in-memory ``transformers.Blip2QFormerModel``."""
    config = Blip2QFormerConfig.from_hf_dict(hf_model.config.to_dict())
    return Blip2QFormerModel(config), convert_qformer(hf_model.state_dict(), config,
                                                      source="transformers Blip2QFormerModel")
