"""The CLIP experiment: a real HF CLIP checkpoint on a real dataset (TFDS or a local folder),
through the dual-encoder stages (``mrepe_jax.stages.dual_encoder``). ``checkpoint`` loads it,
``data`` reads its labelled images, ``pipeline`` runs it."""

from mrepe_jax.experiments.clip.pipeline import run, summary

__all__ = ["run", "summary"]
