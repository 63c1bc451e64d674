"""The ToyWorld tri-modal CLIP (DESIGN.md §5): CLIP's vision and text towers and an audio tower (a
ViT over log-mel patches), built from the same Flax towers as the real models. ``train.toyclip``
trains it on ToyWorld."""

from mrepe_jax.models.trimodal.model import TriModalCLIP, TriModalConfig

__all__ = ["TriModalCLIP", "TriModalConfig"]
