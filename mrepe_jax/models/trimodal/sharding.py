"""The ToyWorld tri-modal CLIP's sharding rule table: CLIP's (``models.clip.sharding``), whose
patterns already cover the audio tower (``audio_model/...``, built from CLIP's vision layers) and
its ``audio_projection``."""

from mrepe_jax.models.clip.sharding import CLIP_RULES

TRIMODAL_RULES = CLIP_RULES
