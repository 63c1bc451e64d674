"""CLAP (transformers-compatible ``ClapModel``): the HTSAT audio tower and the RoBERTa text tower with
named sites, their projections and logit scales, the checkpoint converter and the sharding table.

``config`` (``ClapConfig`` and its towers'), ``swin`` (HTSAT's Swin blocks: window attention,
shifted windows, patch merging), ``htsat`` (the audio tower: mel image, patch embedding and
fusion, stages, pooling), ``roberta`` (the text tower), ``model`` (``ClapModel``), ``convert``
(the HF conversion table, ``load_pretrained`` / ``save_pretrained``) and ``sharding``.
"""

from mrepe_jax.models.clap.config import ClapAudioConfig, ClapConfig, ClapTextConfig
from mrepe_jax.models.clap.convert import from_torch_model, load_pretrained, save_pretrained, stack_text_layers
from mrepe_jax.models.clap.htsat import ClapAudioModel
from mrepe_jax.models.clap.model import ClapModel
from mrepe_jax.models.clap.roberta import ClapTextModel

__all__ = ["ClapAudioConfig", "ClapAudioModel", "ClapConfig", "ClapModel", "ClapTextConfig", "ClapTextModel",
           "from_torch_model", "load_pretrained", "save_pretrained", "stack_text_layers"]
