"""CLIP: the conversion table between transformers' ``CLIPModel`` state dict and our Flax params,
and ``load_pretrained`` / ``save_pretrained`` for HF-format directories (DESIGN.md §2)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp

from mrepe_jax.models import hf_files
from mrepe_jax.models.clip.config import CLIPConfig, from_hf_dict, to_hf_dict
from mrepe_jax.models.clip.model import CLIPModel
from mrepe_jax.models.convert import (
    Rule,
    hwio_to_oihw,
    oihw_to_hwio,
    param_shapes,
    to_flax,
    to_hf,
    to_numpy,
    transpose,
)
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params, unstack_layer_params

LINEARS = r"q_proj|k_proj|v_proj|out_proj|fc1|fc2"
LAYER_NORMS = r"layer_norm\d|pre_layrnorm|post_layernorm|final_layer_norm"

# HF key (regex; group 1 = module path)                     -> Flax leaf, to_flax, to_hf
CLIP_RULES = (
    Rule(rf"(.*\.(?:{LINEARS})|visual_projection|text_projection)\.weight", "kernel",
         transpose, transpose, hf_leaf="weight"),
    Rule(r"(.*)\.bias", "bias"),
    Rule(rf"(.*(?:{LAYER_NORMS}))\.weight", "scale", hf_leaf="weight"),
    Rule(r"(.*(?:token_embedding|position_embedding))\.weight", "embedding", hf_leaf="weight"),
    Rule(r"(.*embeddings)\.patch_embedding\.weight", "patch_embedding",
         oihw_to_hwio, hwio_to_oihw, hf_leaf="patch_embedding.weight"),
    Rule(r"(.*embeddings)\.class_embedding", "class_embedding"),
    Rule(r"()logit_scale", "logit_scale"),
)
# Non-persistent buffers that older checkpoints still carry.
CLIP_IGNORED = (r".*\.position_ids",)


def dummy_inputs(config: CLIPConfig):
    v, t = config.vision_config, config.text_config
    h, w = v.image_hw
    return jnp.zeros((1, h, w, v.num_channels)), jnp.zeros((1, min(4, t.max_position_embeddings)), jnp.int32)


def clip_param_shapes(model: CLIPModel) -> dict[tuple[str, ...], tuple[int, ...]]:
    return param_shapes(model, *dummy_inputs(model.config))


def convert_state_dict(state_dict, config: CLIPConfig, source: str = "checkpoint") -> dict:
    """HF ``CLIPModel`` state dict (numpy or torch tensors) -> Flax params for ``CLIPModel(config)``."""
    state_dict = {k: to_numpy(v) for k, v in state_dict.items()}
    return to_flax(state_dict, CLIP_RULES, clip_param_shapes(CLIPModel(config)), CLIP_IGNORED, source)


def from_torch_model(hf_model) -> tuple[CLIPModel, dict]:
    """(model, params) from an in-memory ``transformers.CLIPModel``."""
    config = from_hf_dict(hf_model.config.to_dict())
    return CLIPModel(config), convert_state_dict(hf_model.state_dict(), config, "transformers model")


def load_pretrained(name_or_dir: str | os.PathLike, local_files_only: bool | None = None,
                    execution: Execution = Execution()):
    """(model, params) from a local HF directory (config.json + model.safetensors) or a hub id.

    Only safetensors are read; a directory with only pickled weights is refused. With
    ``execution.scan_layers`` the params come stacked (``layer_stack``), ready for that model.
    """
    directory = hf_files.resolve(name_or_dir, local_files_only)
    config = from_hf_dict(hf_files.read_config(directory))
    state_dict = hf_files.read_state_dict(directory)
    params = convert_state_dict(state_dict, config, f"checkpoint {str(directory)!r}")
    if execution.scan_layers:
        params = stack_layer_params(params)
    return CLIPModel(config, execution=execution), params


def save_pretrained(directory: str | os.PathLike, config: CLIPConfig, params) -> Path:
    """Writes an HF-format directory that both ``load_pretrained`` and transformers can read
    (stacked params of a scanned model are unstacked first)."""
    params = unstack_layer_params(jax.device_get(params))
    return hf_files.write_checkpoint(directory, to_hf_dict(config), to_hf(params, CLIP_RULES))
