"""BLIP-2 with an OPT language model (transformers-compatible), every part with named sites.

``vision`` (the EVA ViT, built on CLIP's encoder), ``qformer`` (the Q-Former), ``opt`` (the OPT
decoder with its KV cache), ``model`` (the composite, greedy generation and the captioning
decoder ``QueriedLanguageModel``), ``convert`` / ``parts_convert`` / ``opt_convert`` (one HF
conversion table per part, ``load_pretrained`` / ``save_pretrained``) and ``preprocess``.
"""

from mrepe_jax.models.blip2.convert import from_torch_model, load_pretrained, save_pretrained
from mrepe_jax.models.blip2.model import (
                                          Blip2Config,
                                          Blip2ForConditionalGeneration,
                                          QueriedLanguageModel,
                                          decode,
                                          default_prompt,
                                          generate,
)

__all__ = ["Blip2Config", "Blip2ForConditionalGeneration", "QueriedLanguageModel", "decode",
           "default_prompt", "from_torch_model", "generate", "load_pretrained", "save_pretrained"]
