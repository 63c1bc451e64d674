"""CLIP (transformers-compatible): the two towers with named sites, its config, the checkpoint
converter and the image/text preprocessing.

``model`` (the towers and ``ContrastiveTowers``, which every CLIP-like family extends), ``layers``
(CLIP's pre-LN encoder, which BLIP-2's EVA ViT reuses), ``config``, ``convert`` (the HF conversion
table, ``load_pretrained`` / ``save_pretrained``) and ``preprocess``.
"""

from mrepe_jax.models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from mrepe_jax.models.clip.convert import from_torch_model, load_pretrained, save_pretrained
from mrepe_jax.models.clip.model import CLIPModel, ContrastiveTowers

__all__ = ["CLIPConfig", "CLIPModel", "CLIPTextConfig", "CLIPVisionConfig", "ContrastiveTowers",
           "from_torch_model", "load_pretrained", "save_pretrained"]
