"""BLIP-2 (OPT): ONE conversion table for transformers' ``Blip2ForConditionalGeneration`` state dict,
and ``load_pretrained`` / ``save_pretrained`` for HF-format directories (DESIGN.md §2).

The table is the parts' tables under the checkpoint prefixes transformers 5.24 uses (checked on a
tiny model; there is no key renaming for BLIP-2):

=========================================  ==========================================  ==============
HF key                                     Flax path                                   from
=========================================  ==========================================  ==============
``vision_model.*``                         ``vision_model/...``                        ``vision_rules``
``query_tokens`` ``[1, Nq, D_q]``          ``query_tokens`` (as is)                    ``QUERY_TOKENS_RULE``
``qformer.*``                              ``qformer/...``                             ``qformer_rules``
``language_projection.weight|bias``        ``language_projection/kernel`` (transposed) | ``bias``
``language_model.model.decoder.*``         ``language_model/model/decoder/...``        ``opt_rules``
``language_model.lm_head.weight``          none: tied to ``embed_tokens`` (checked equal when present)
=========================================  ==========================================  ==============

Loading reads a local directory or a hub id (``hf_files.resolve``), safetensors only, single or
sharded; a sharded checkpoint is converted shard by shard as its tensors are read
(``hf_files.SafetensorsCheckpoint``), so the raw and the converted weights are never both held
whole. Everything ends in ``convert.to_flax``, which names every unused key, every missing
parameter and every shape mismatch at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mrepe_jax.models import hf_files
from mrepe_jax.models.blip2.model import Blip2Config, Blip2ForConditionalGeneration, to_hf_dict
from mrepe_jax.models.blip2.opt_convert import check_tied_lm_head, lm_head_ignored, opt_rules
from mrepe_jax.models.blip2.parts_convert import (
    QFORMER_PREFIX,
    QUERY_TOKENS_RULE,
    VISION_PREFIX,
    qformer_ignored,
    qformer_rules,
    vision_rules,
)
from mrepe_jax.models.convert import Rule, param_shapes, to_flax, to_hf, to_numpy, transpose
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params, unstack_layer_params

LM_PREFIX = "language_model."

# HF key (regex; group 1 = module path, prefix included)  -> Flax leaf, to_flax, to_hf
BLIP2_RULES: tuple[Rule, ...] = (
    vision_rules(VISION_PREFIX)
    + (QUERY_TOKENS_RULE,)
    + qformer_rules(QFORMER_PREFIX)
    + (Rule(r"(language_projection)\.weight", "kernel", transpose, transpose, hf_leaf="weight"),
       Rule(r"(language_projection)\.bias", "bias"))
    + opt_rules(LM_PREFIX)
)


def ignored(config: Blip2Config) -> tuple[str, ...]:
    """Keys read on purpose by nothing: the tied lm_head and, with ``use_qformer_text_input``, the
    Q-Former's text-token MLP (the query-only forward never runs it)."""
    return qformer_ignored(config.qformer_config, QFORMER_PREFIX) + lm_head_ignored(LM_PREFIX)


def dummy_inputs(config: Blip2Config):
    h, w = config.vision_config.image_hw
    ids = np.full((1, config.num_query_tokens), config.image_token_index, np.int32)
    return jnp.zeros((1, h, w, config.vision_config.num_channels)), ids


def blip2_param_shapes(model: Blip2ForConditionalGeneration) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax path -> shape of every parameter of ``model`` (per-layer layout: unscanned)."""
    pixels, ids = dummy_inputs(model.config)
    return param_shapes(model.clone(execution=Execution()), pixels, jnp.asarray(ids))


def convert_state_dict(state_dict: Mapping, config: Blip2Config, source: str = "checkpoint") -> dict:
    """HF ``Blip2ForConditionalGeneration`` state dict -> per-layer Flax params. ``state_dict`` may
    be lazy (``hf_files.SafetensorsCheckpoint``): ``to_flax`` reads each tensor once, in order."""
    if f"{LM_PREFIX}lm_head.weight" in state_dict:
        check_tied_lm_head(state_dict, LM_PREFIX)
    shapes = blip2_param_shapes(Blip2ForConditionalGeneration(config))
    return to_flax(state_dict, BLIP2_RULES, shapes, ignored(config), source)


def from_torch_model(hf_model) -> tuple[Blip2ForConditionalGeneration, dict]:
    """(model, params) from an in-memory ``transformers.Blip2ForConditionalGeneration``."""
    config = Blip2Config.from_hf_dict(hf_model.config.to_dict())
    sd = {k: to_numpy(v) for k, v in hf_model.state_dict().items()}
    params = convert_state_dict(sd, config, "transformers Blip2ForConditionalGeneration")
    return Blip2ForConditionalGeneration(config), params


def load_pretrained(name_or_dir: str | os.PathLike, local_files_only: bool | None = None,
                    execution: Execution = Execution()):
    """(model, params) from a local HF directory (config.json + safetensors, single or sharded) or
    a hub id (offline: an error naming the directory looked in). Pickled weights are refused.
    With ``execution.scan_layers`` the vision tower's params come stacked (``layer_stack``)."""
    directory = hf_files.resolve(name_or_dir, local_files_only)
    config = Blip2Config.from_hf_dict(hf_files.read_config(directory))
    checkpoint = hf_files.SafetensorsCheckpoint(directory)
    params = convert_state_dict(checkpoint, config, f"checkpoint {str(directory)!r}")
    if execution.scan_layers:
        params["vision_model"] = stack_layer_params(params["vision_model"])
    return Blip2ForConditionalGeneration(config, execution=execution), params


def save_pretrained(directory: str | os.PathLike, config: Blip2Config, params) -> Path:
    """Writes an HF-format directory (config.json + model.safetensors) that ``load_pretrained``
    and ``transformers.Blip2ForConditionalGeneration.from_pretrained`` read (the lm_head is tied
    and not written, as transformers does; stacked vision layers are unstacked first)."""
    params = unstack_layer_params(jax.device_get(params))
    return hf_files.write_checkpoint(directory, to_hf_dict(config), to_hf(params, BLIP2_RULES))
