"""The CLAP experiment's labelled audio: a TFDS set (``speech_commands`` by default) or a folder
``<split>/<class>/*.wav``, as mono waveforms at the checkpoint's rate (``data.labelled_audio``).
Every WAV file a folder run reads has its header parsed and its rate checked before the first
stage (``stages.dual_encoder.data.check``); the samples are decoded as the stages stream them."""

from __future__ import annotations

import dataclasses

from mrepe_jax.data import labelled_audio
from mrepe_jax.stages.dual_encoder.modality import Modality


@dataclasses.dataclass(frozen=True)
class Audio(Modality):
    """Audio read by CLAP's HTSAT tower (config section ``audio``) at ``sample_rate`` Hz: other
    rates are resampled, or refused with ``audio.resample=False``."""

    sample_rate: int = 48_000
    tower: str = "audio"
    input_key: str = "features"
    section: str = "audio"
    noun: str = "recording"
    plural: str = "recordings"
    pair: str = "Text-Audio"
    readout: str = "the mean of the last stage's tokens"

    def _folder(self, cfg, split):
        return labelled_audio.folder_audio(cfg.path, cfg.folders[split], cfg.classes, sample_rate=self.sample_rate,
                                           resample=bool(cfg.resample), limit=int(cfg.num[split]))

    def batches(self, cfg, split, batch_size):
        if cfg.source == "tfds":
            data = labelled_audio.tfds_audio(
                cfg.name, cfg.splits[split], cfg.classes, sample_rate=self.sample_rate,
                resample=bool(cfg.resample), limit=int(cfg.num[split]), label_key=cfg.label_key,
                data_dir=cfg.data_dir, download=cfg.download)
        else:
            data = self._folder(cfg, split)
        return data.batches(batch_size)

    def folder_classes(self, cfg):
        return labelled_audio.folder_classes(cfg.path, cfg.folders.train)

    def folder_files(self, cfg, split):
        return list(self._folder(cfg, split).files)

    def check_file(self, cfg, path):
        header = labelled_audio.read_header(path)  # corrupt, truncated or empty files fail here
        labelled_audio.check_rate(header.sample_rate, self.sample_rate, bool(cfg.resample),
                                  f"WAV file {str(path)!r}")

    def prompt_names(self, classes):
        return [labelled_audio.readable(c) for c in classes]
