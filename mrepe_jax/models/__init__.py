"""Flax models with named sites: CLIP (HF-compatible) and the ToyWorld tri-modal CLIP."""

from mrepe_jax.models.clip import CLIPModel, ContrastiveTowers
from mrepe_jax.models.clip_config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.clip_convert import from_torch_model, load_pretrained, save_pretrained
from mrepe_jax.models.execution import Execution
from mrepe_jax.models.layer_stack import stack_layer_params, unstack_layer_params
from mrepe_jax.models.trimodal import TriModalCLIP, TriModalConfig

__all__ = ["CLIPConfig", "CLIPModel", "CLIPTextConfig", "CLIPVisionConfig", "ContrastiveTowers",
           "Execution", "TriModalCLIP", "TriModalConfig", "from_torch_model", "load_pretrained",
           "save_pretrained", "stack_layer_params", "unstack_layer_params"]
