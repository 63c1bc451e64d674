"""The CLIP experiment: a real HF CLIP checkpoint on a real dataset (TFDS or a local folder),
through the stages ToyWorld runs (``mrepe_jax.stages``). ``pipeline`` runs them; ``report``
renders ``report.md``."""

from mrepe_jax.experiments.clip.pipeline import run, summary

__all__ = ["run", "summary"]
