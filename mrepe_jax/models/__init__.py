"""Flax models with named sites, one package per family, and what every family shares.

Families: ``clip`` (transformers' CLIP), ``blip2`` (EVA ViT, Q-Former and OPT) and ``trimodal``
(the ToyWorld tri-modal CLIP). Shared: ``layers`` (Dense, LayerNorm, activations,
``normalize``), ``attention``, ``layer_stack`` (scanned stacks), ``execution``, ``inputs``,
``convert`` (the generic HF conversion engine each family's table feeds) and ``hf_files``.
"""

from mrepe_jax.models.clip import (
                                   CLIPConfig,
                                   CLIPModel,
                                   CLIPTextConfig,
                                   CLIPVisionConfig,
                                   ContrastiveTowers,
                                   from_torch_model,
                                   load_pretrained,
                                   save_pretrained,
)
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params, unstack_layer_params
from mrepe_jax.models.trimodal import TriModalCLIP, TriModalConfig

__all__ = ["CLIPConfig", "CLIPModel", "CLIPTextConfig", "CLIPVisionConfig", "ContrastiveTowers",
           "Execution", "TriModalCLIP", "TriModalConfig", "from_torch_model", "load_pretrained",
           "save_pretrained", "stack_layer_params", "unstack_layer_params"]
