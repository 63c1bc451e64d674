"""A CLIP checkpoint for the dual-encoder stages: ``models.clip.load_pretrained``, its rule table,
its own tokenizer and image preprocessing."""

from __future__ import annotations

import ml_collections
import numpy as np

from mrepe_jax.experiments.clip.data import IMAGES
from mrepe_jax.models.clip import convert as clip_convert
from mrepe_jax.models.clip.preprocess import ImagePreprocessConfig, load_tokenizer, preprocess_images, tokenize
from mrepe_jax.models.clip.sharding import CLIP_RULES
from mrepe_jax.stages.dual_encoder.checkpoint import Checkpoint

#: CLIP clamps its learned logit scale at 100 (exp of the stored log).
MAX_LOGIT_SCALE = 100.0


class ClipCheckpoint(Checkpoint):
    modality = IMAGES
    decomposes = True

    def __init__(self, cfg: ml_collections.ConfigDict, mesh_cfg: ml_collections.ConfigDict | None = None):
        super().__init__(cfg, mesh_cfg, clip_convert.load_pretrained, CLIP_RULES)
        self.tokenizer = load_tokenizer(self.directory)
        self.preprocess = ImagePreprocessConfig.from_dir(self.directory)
        self.max_length = self.model.config.text_config.max_position_embeddings

    def inputs(self, raw):
        return preprocess_images(list(raw), self.preprocess)

    def tokens(self, texts):
        return tokenize(self.tokenizer, texts, self.max_length)

    def token_labels(self, ids):
        return tuple(t.replace("</w>", "") for t in self.tokenizer.convert_ids_to_tokens(np.asarray(ids).tolist()))

    def logit_scale(self) -> float:
        return min(float(np.exp(np.asarray(self.params["logit_scale"]))), MAX_LOGIT_SCALE)
