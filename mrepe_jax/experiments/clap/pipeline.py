"""The MRepE stages on a real CLAP checkpoint and labelled audio (``configs/clap.py``).

    python -m launch.run --config=configs/clap.py --workdir=runs/clap \
        --config.model.name=laion/clap-htsat-unfused

Any HF CLAP directory or hub id (safetensors), fp32 or bf16; audio concepts from TFDS
(``speech_commands`` by default) or a folder ``<split>/<class>/*.wav`` resampled to the model's
rate; text concepts from words in captions. The stages, report and data checks are the
dual-encoder ones (``stages.dual_encoder``), shared with the CLIP experiment: zero-shot audio
classification, Table 1 for both towers, Table 2's Text-Audio row, Table 3 steering of audio and
text, patching heatmaps (the audio tower over one stage's blocks), direction and map bundles.
"""

from __future__ import annotations

import os

import ml_collections

from mrepe_jax.experiments.clap.checkpoint import ClapCheckpoint
from mrepe_jax.stages.dual_encoder import pipeline
from mrepe_jax.stages.dual_encoder.report import summary

__all__ = ["run", "summary"]


def load(config: ml_collections.ConfigDict) -> ClapCheckpoint:
    return ClapCheckpoint(config.model, config.mesh)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """Every stage into ``workdir`` (``stages.dual_encoder.pipeline.run``)."""
    return pipeline.run("clap", config, workdir, load, progress)
