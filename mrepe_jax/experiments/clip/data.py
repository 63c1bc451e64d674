"""The CLIP experiment's labelled images: a TFDS classification set or a folder
``<split>/<class>/<image>``, every folder file decoded in full before the first stage
(``stages.dual_encoder.data.check``)."""

from __future__ import annotations

import dataclasses

from mrepe_jax.data import concepts
from mrepe_jax.data.source_base import read_rgb
from mrepe_jax.stages.dual_encoder.modality import Modality


@dataclasses.dataclass(frozen=True)
class Images(Modality):
    """Images read by CLIP's vision tower (config section ``images``)."""

    tower: str = "vision"
    input_key: str = "image"
    section: str = "images"
    noun: str = "image"
    plural: str = "images"
    pair: str = "Text-Image"
    readout: str = "CLS"

    def batches(self, cfg, split, batch_size):
        limit = int(cfg.num[split])
        if cfg.source == "tfds":
            return concepts.tfds_images(cfg.name, cfg.splits[split], cfg.classes, batch_size=batch_size,
                                        limit=limit, label_key=cfg.label_key, data_dir=cfg.data_dir,
                                        download=cfg.download)
        return concepts.folder_images(cfg.path, cfg.folders[split], cfg.classes,
                                      batch_size=batch_size, limit=limit)

    def folder_classes(self, cfg):
        return concepts.folder_classes(cfg.path, cfg.folders.train)

    def folder_files(self, cfg, split):
        return concepts.folder_files(cfg.path, cfg.folders[split], cfg.classes, int(cfg.num[split]))

    def check_file(self, cfg, path):
        read_rgb(path)  # decodes the whole file: a truncated image fails here, not mid-run


IMAGES = Images()
