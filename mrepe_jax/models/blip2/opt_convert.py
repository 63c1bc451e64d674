"""OPT: the conversion table between transformers' ``OPTForCausalLM`` state dict and our Flax params
(``opt.OPTForCausalLM``), through the generic ``convert.to_flax`` (DESIGN.md §2).

Group 1 of every pattern is the module path, prefix included, so the same table serves a bare
``OPTForCausalLM`` (``model.decoder.layers.0.fc1.weight``) and the language model inside
``Blip2ForConditionalGeneration`` (``language_model.model.decoder.layers.0.fc1.weight``, its
``language_model`` submodule): ``OPT_RULES`` accepts both, ``opt_rules(prefix)`` only one, for a
combined table where a looser pattern could claim another tower's keys. The ``lm_head`` is tied to
``embed_tokens`` (no Flax parameter): its key, present or not, is checked to equal the embedding.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np

from mrepe_jax.models.blip2.opt import OPTConfig, OPTForCausalLM
from mrepe_jax.models.convert import (
    ConversionError,
    Rule,
    linear_and_norm_rules,
    param_shapes,
    to_flax,
    to_numpy,
)

LINEARS = r"self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|fc1|fc2"
LAYER_NORMS = r"self_attn_layer_norm|final_layer_norm"


def _rules(prefix_regex: str) -> tuple[Rule, ...]:
    dec = rf"{prefix_regex}model\.decoder"
    linear = rf"{dec}\.layers\.\d+\.(?:{LINEARS})"
    norm = rf"{dec}\.(?:layers\.\d+\.(?:{LAYER_NORMS})|final_layer_norm)"
    # HF key (regex; group 1 = module path)                 -> Flax leaf, to_flax, to_hf
    return linear_and_norm_rules(linear, norm) + (
        Rule(rf"({dec}\.(?:embed_tokens|embed_positions))\.weight", "embedding", hf_leaf="weight"),
    )


def opt_rules(prefix: str = "") -> tuple[Rule, ...]:
    """The OPT table for keys under the literal ``prefix`` (e.g. ``"language_model."``); the Flax
    paths keep it (``language_model/model/decoder/...``)."""
    return _rules(re.escape(prefix))


# Bare OPTForCausalLM keys, or BLIP-2's ``language_model.``-prefixed ones.
OPT_RULES = _rules(r"(?:language_model\.)?")


def lm_head_ignored(prefix: str = "") -> tuple[str, ...]:
    """Key patterns ``to_flax`` must skip: the tied ``lm_head.weight`` (see ``check_tied_lm_head``)."""
    return (re.escape(prefix) + r"lm_head\.weight",)


def check_tied_lm_head(state_dict, prefix: str = "") -> None:
    """The lm_head, when the checkpoint stores it, must be the token embedding: the Flax model has
    no lm_head of its own, so an untied one would be silently dropped."""
    head = state_dict.get(f"{prefix}lm_head.weight")
    embed = state_dict.get(f"{prefix}model.decoder.embed_tokens.weight")
    if head is None or embed is None:
        return
    head, embed = np.asarray(head), np.asarray(embed)
    if head.shape != embed.shape or not np.array_equal(head, embed):
        raise ConversionError(
            f"{prefix}lm_head.weight {head.shape} differs from {prefix}model.decoder.embed_tokens."
            f"weight {embed.shape}: an untied lm_head is not supported (the model ties it)")


def opt_param_shapes(model: OPTForCausalLM) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of every parameter of ``model`` (no arrays allocated)."""
    return param_shapes(model, jnp.zeros((1, 1), jnp.int32))


def convert_state_dict(state_dict, config: OPTConfig, prefix: str = "",
                       source: str = "checkpoint") -> dict:
    """HF ``OPTForCausalLM`` state dict -> Flax params for ``OPTForCausalLM(config)``.

    With ``prefix`` (e.g. ``"language_model."``) only the keys under it are read, so a whole
    BLIP-2 state dict may be passed; every one of them must be used.
    """
    sd = {k[len(prefix):]: to_numpy(v) for k, v in state_dict.items() if k.startswith(prefix)}
    check_tied_lm_head(sd)
    shapes = opt_param_shapes(OPTForCausalLM(config))
    return to_flax(sd, opt_rules(), shapes, lm_head_ignored(), source)


def from_torch_opt(hf_model) -> tuple[OPTForCausalLM, dict]:
    """(model, params) from an in-memory ``transformers.OPTForCausalLM``."""
    config = OPTConfig.from_hf_dict(hf_model.config.to_dict())
    params = convert_state_dict(hf_model.state_dict(), config, source="transformers OPT model")
    return OPTForCausalLM(config), params
