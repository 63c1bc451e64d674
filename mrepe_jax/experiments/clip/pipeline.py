"""The MRepE stages on a real CLIP checkpoint and real data (``configs/clip.py``).

    python -m launch.run --config=configs/clip.py --workdir=runs/clip-b32 \
        --config.model.name=openai/clip-vit-base-patch32

Any HF CLIP directory or hub id (safetensors), fp32 or bf16; image concepts from TFDS (e.g.
``cifar10``) or a folder ``<split>/<class>/<image>``; text concepts from words in captions. The
stages, report and data checks are the dual-encoder ones (``stages.dual_encoder``), shared with
the CLAP experiment.
"""

from __future__ import annotations

import os

import ml_collections

from mrepe_jax.experiments.clip.checkpoint import ClipCheckpoint
from mrepe_jax.stages.dual_encoder import pipeline
from mrepe_jax.stages.dual_encoder.report import summary

__all__ = ["run", "summary"]


def load(config: ml_collections.ConfigDict) -> ClipCheckpoint:
    return ClipCheckpoint(config.model, config.mesh)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """Every stage into ``workdir`` (``stages.dual_encoder.pipeline.run``)."""
    return pipeline.run("clip", config, workdir, load, progress)
