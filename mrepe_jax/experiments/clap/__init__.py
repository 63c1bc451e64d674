"""The CLAP experiment: a real HF CLAP checkpoint on labelled audio (TFDS or a folder of WAV files),
through the dual-encoder stages (``mrepe_jax.stages.dual_encoder``). ``checkpoint`` loads it,
``data`` reads its labelled audio, ``pipeline`` runs it."""

from mrepe_jax.experiments.clap.pipeline import run, summary

__all__ = ["run", "summary"]
