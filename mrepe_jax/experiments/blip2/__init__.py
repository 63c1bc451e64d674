"""The BLIP-2 experiment: a real HF BLIP-2 (OPT) checkpoint on images with captions (TFDS
``coco_captions`` or a folder + JSONL), through the stages the other experiments run
(``mrepe_jax.stages``) plus Table 3 for captions. ``pipeline`` runs them; ``report`` renders
``report.md``."""

from mrepe_jax.experiments.blip2.pipeline import run, summary

__all__ = ["run", "summary"]
